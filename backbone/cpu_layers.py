"""BatchNorm and PReLU whose per-channel sums run in one CPU kernel each.

Jittor computes the sums over (N, H, W) a training step needs (BatchNorm's batch moments,
the gradients of its scale and shift, PReLU's slope gradient) with generated reduce
kernels that read NCHW at 1-5 GB/s on the CPU: two thirds of a MobileFaceNet step
(README: Benchmark). Here those sums are one OpenMP kernel over contiguous planes, channel
by channel, accumulated in float64; everything else stays Jittor's element-wise ops, and
the formulas are Jittor's own (batch moments, a biased running variance, statistics
averaged over the ranks under mpirun unless `sync` is off). On a GPU, in eval mode and for
other dtypes than float32 the layers are Jittor's unchanged.
"""
import jittor as jt
from jittor import nn

CHANNEL_SUMS_SRC = """
const int N = in0_shape0, C = in0_shape1, S = in0_shape2;
#pragma omp parallel for schedule(static)
for (int c = 0; c < C; c++) {
    double total = 0, total_product = 0;
    for (int n = 0; n < N; n++) {
        const in0_type* x = in0_p + ((size_t)n * C + c) * S;
        const in1_type* y = in1_p + ((size_t)n * C + c) * S;
        float plane = 0, plane_product = 0;
        #pragma omp simd reduction(+:plane, plane_product)
        for (int s = 0; s < S; s++) {
            plane += x[s];
            plane_product += x[s] * FACTOR(y[s]);
        }
        total += plane;
        total_product += plane_product;
    }
    out0_p[c] = total;
    out1_p[c] = total_product;
}
"""
FACTORS = {"y": "#define FACTOR(v) (v)", "min(y, 0)": "#define FACTOR(v) ((v) < 0 ? (v) : 0)"}


def channel_sums(x, y, factor="y"):
    """Per channel c of two N x C x ... float32 arrays: (sum of x, sum of x * factor(y)), each of shape (C,)."""
    n, c = x.shape[:2]
    return jt.code([(c,), (c,)], [x.dtype, x.dtype], [x.reshape(n, c, -1), y.reshape(n, c, -1)],
                   cpu_header=FACTORS[factor], cpu_src=CHANNEL_SUMS_SRC)


def per_channel(v, x):
    """A (C,) vector broadcast along x's channel axis (axis 1)."""
    return v.broadcast(x, [0, *range(2, x.ndim)])


class BatchMoments(jt.Function):
    """(mean of x, mean of x^2) per channel over every axis but 1."""

    def execute(self, x):
        self.x = x
        self.count = x.numel() // x.shape[1]
        total, squares = channel_sums(x, x)
        return total / self.count, squares / self.count

    def grad(self, d_mean, d_square_mean):
        x, zeros = self.x, jt.zeros(self.x.shape[1])
        d_mean = zeros if d_mean is None else d_mean
        d_square_mean = zeros if d_square_mean is None else d_square_mean
        return per_channel(d_mean / self.count, x) + x * per_channel(d_square_mean * (2.0 / self.count), x)


class ChannelAffine(jt.Function):
    """x * scale + shift, both per channel."""

    def execute(self, x, scale, shift):
        self.x, self.scale = x, scale
        return x * per_channel(scale, x) + per_channel(shift, x)

    def grad(self, dy):
        d_shift, d_scale = channel_sums(dy, self.x)
        return dy * per_channel(self.scale, dy), d_scale, d_shift


class ChannelPReLU(jt.Function):
    """x where x > 0, else slope * x, with one slope per channel."""

    def execute(self, x, slope):
        self.x, self.slope = x, slope
        return jt.ternary(x > 0, x, x * per_channel(slope, x))

    def grad(self, dy):
        _, d_slope = channel_sums(dy, self.x, "min(y, 0)")
        return jt.ternary(self.x > 0, dy, dy * per_channel(self.slope, dy)), d_slope


def use_cpu_kernel(x, *params):
    return not jt.flags.use_cuda and all(v.dtype == "float32" for v in (x, *params))


class BatchNorm(nn.BatchNorm):
    """nn.BatchNorm (1d and 2d) with the training step's channel sums in CPU kernels."""

    def execute(self, x):
        if not (self.is_train and self.affine and use_cpu_kernel(x, self.weight, self.bias)):
            return super().execute(x)
        mean, square_mean = BatchMoments()(x)
        if self.sync and jt.in_mpi:
            mean, square_mean = mean.mpi_all_reduce("mean"), square_mean.mpi_all_reduce("mean")
        var = (square_mean - mean * mean).maximum(0.0)
        scale = self.weight / jt.sqrt(var + self.eps)
        self.running_mean.update(self.running_mean + (mean - self.running_mean) * self.momentum)
        self.running_var.update(self.running_var + (var - self.running_var) * self.momentum)
        return ChannelAffine()(x, scale, self.bias - mean * scale)


class PReLU(nn.PReLU):
    """nn.PReLU with one slope per channel, whose slope gradient is summed in a CPU kernel."""

    def execute(self, x):
        if self.num_parameters == 1 or not use_cpu_kernel(x, self.weight):
            return super().execute(x)
        return ChannelPReLU()(x, self.weight)
