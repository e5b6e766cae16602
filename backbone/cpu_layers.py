"""BatchNorm and PReLU whose per-channel sums run in one CPU kernel.

Jittor computes the sums over (N, H, W) a training step needs (BatchNorm's batch moments,
the gradients of its scale and shift, PReLU's slope gradient) with generated reduce
kernels that read NCHW at 1-5 GB/s on the CPU: two thirds of a MobileFaceNet step
(docs/benchmark.md). Here they are one OpenMP kernel over contiguous planes, channel by
channel, accumulated in float64; everything else stays Jittor's element-wise ops, and the
formulas are Jittor's own (batch moments, a biased running variance, statistics averaged
over the ranks under mpirun unless `sync` is off). A BatchNorm followed by a PReLU runs as
one step (`batchnorm_prelu`), which recomputes the BatchNorm output in its gradient instead
of keeping it, as Jittor's fused kernels do. On a GPU, in eval mode and for other dtypes
than float32 the layers are Jittor's unchanged.
"""
import jittor as jt
from jittor import nn

CHANNEL_SUMS_SRC = """
typedef in1_type T;  // the arrays' type (float32 in training; float64 when the formulas are checked)
const int N = in0_shape0, C = in0_shape1, S = in0_shape2;
#pragma omp parallel for schedule(static)
for (int c = 0; c < C; c++) {
    const T scale = in2_p[c], shift = in3_p[c], slope = in4_p[c];
    double total[3] = {0, 0, 0};
    for (int n = 0; n < N; n++) {
        const T* dz = in0_p + ((size_t)n * C + c) * S;
        const T* x = in1_p + ((size_t)n * C + c) * S;
        T d_y = 0, d_y_x = 0, d_z_negative = 0;
        #pragma omp simd reduction(+:d_y, d_y_x, d_z_negative)
        for (int s = 0; s < S; s++) {
            const T y = x[s] * scale + shift;
            const T dy = y > 0 ? dz[s] : dz[s] * slope;
            d_y += dy;
            d_y_x += dy * x[s];
            d_z_negative += y > 0 ? T(0) : dz[s] * y;
        }
        total[0] += d_y;
        total[1] += d_y_x;
        total[2] += d_z_negative;
    }
    out0_p[c] = total[0];
    out1_p[c] = total[1];
    out2_p[c] = total[2];
}
"""


def channel_sums(dz, x, scale, shift, slope):
    """Per channel c of N x C x ... float32 arrays, with y = x * scale + shift and dy = dz where y > 0,
    else dz * slope (the gradient through a PReLU): (sum of dy, sum of dy * x, sum of dz * min(y, 0)).

    With dz = x, scale 1, shift 0, slope 1 the first two are the sums of x and x^2."""
    n, c = x.shape[:2]
    return jt.code([(c,)] * 3, [x.dtype] * 3, [dz.reshape(n, c, -1), x.reshape(n, c, -1), scale, shift, slope],
                   cpu_src=CHANNEL_SUMS_SRC)


def per_channel(v, x):
    """A (C,) vector broadcast along x's channel axis (axis 1)."""
    return v.broadcast(x, [0, *range(2, x.ndim)])


def take_saved(function):
    """The Vars a Function saved for its gradient, dropped from it: jt.grad calls `grad` before anything
    runs, and a Var Python still holds stays allocated until the step has run, past its last use."""
    if function.saved is None:
        raise RuntimeError("backbone.cpu_layers: a second gradient of the same forward pass (jt.grad with "
                           "retain_graph); run the forward pass again for it")
    saved, function.saved = function.saved, None
    return saved

class BatchMoments(jt.Function):
    """(mean of x, mean of x^2) per channel over every axis but 1."""

    def execute(self, x):
        self.saved = x
        self.count = x.numel() // x.shape[1]
        ones, zeros = jt.ones(x.shape[1]), jt.zeros(x.shape[1])
        total, squares, _ = channel_sums(x, x, ones, zeros, ones)
        return total / self.count, squares / self.count

    def grad(self, d_mean, d_square_mean):
        x = take_saved(self)
        zeros = jt.zeros(x.shape[1])
        d_mean = zeros if d_mean is None else d_mean
        d_square_mean = zeros if d_square_mean is None else d_square_mean
        return per_channel(d_mean / self.count, x) + x * per_channel(d_square_mean * (2.0 / self.count), x)


class AffinePReLU(jt.Function):
    """z = PReLU(x * scale + shift) with per-channel scale, shift and slope (a slope of 1: no PReLU)."""

    def execute(self, x, scale, shift, slope):
        self.saved = x, scale, shift, slope
        y = x * per_channel(scale, x) + per_channel(shift, x)
        return jt.ternary(y > 0, y, y * per_channel(slope, x))

    def grad(self, dz):
        x, scale, shift, slope = take_saved(self)
        d_shift, d_scale, d_slope = channel_sums(dz, x, scale, shift, slope)
        y = x * per_channel(scale, x) + per_channel(shift, x)
        dy = jt.ternary(y > 0, dz, dz * per_channel(slope, dz))
        return dy * per_channel(scale, dy), d_scale, d_shift, d_slope


def use_cpu_kernel(x, *params):
    """On the CPU, for float32 (training) and float64 (where the tests check the formulas) arrays of one type."""
    return not jt.flags.use_cuda and x.dtype in ("float32", "float64") and all(v.dtype == x.dtype for v in params)


class BatchNorm(nn.BatchNorm):
    """nn.BatchNorm (1d and 2d) with the training step's channel sums in the CPU kernel."""

    def uses_cpu_kernel(self, x):
        return self.is_train and self.affine and use_cpu_kernel(x, self.weight, self.bias)

    def batch_affine(self, x):
        """(scale, shift) from the batch's moments, Jittor's formulas; updates the running statistics."""
        mean, square_mean = BatchMoments()(x)
        if self.sync and jt.in_mpi:
            mean, square_mean = mean.mpi_all_reduce("mean"), square_mean.mpi_all_reduce("mean")
        var = (square_mean - mean * mean).maximum(0.0)
        scale = self.weight / jt.sqrt(var + self.eps)
        self.running_mean.update(self.running_mean + (mean - self.running_mean) * self.momentum)
        self.running_var.update(self.running_var + (var - self.running_var) * self.momentum)
        return scale, self.bias - mean * scale

    def execute(self, x):
        if not self.uses_cpu_kernel(x):
            return super().execute(x)
        return AffinePReLU()(x, *self.batch_affine(x), jt.ones(x.shape[1]))


class PReLU(nn.PReLU):
    """nn.PReLU with one slope per channel, whose slope gradient is summed in the CPU kernel."""

    def uses_cpu_kernel(self, x):
        return self.num_parameters > 1 and use_cpu_kernel(x, self.weight)

    def execute(self, x):
        if not self.uses_cpu_kernel(x):
            return super().execute(x)
        return AffinePReLU()(x, jt.ones(x.shape[1]), jt.zeros(x.shape[1]), self.weight)


def batchnorm_prelu(batchnorm, prelu, x):
    """prelu(batchnorm(x)), in training on the CPU as one step that keeps only x for the gradient."""
    if not (isinstance(x, jt.Var) and batchnorm.uses_cpu_kernel(x) and prelu.uses_cpu_kernel(x)):
        return prelu(batchnorm(x))
    return AffinePReLU()(x, *batchnorm.batch_affine(x), prelu.weight)
