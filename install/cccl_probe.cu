// The CUDA constructs that install/jittor-1.3.11-cuda.patch puts into Jittor's JIT kernels, compiled the way
// Jittor compiles them (C++17 for CCCL 3). Jittor compiles those kernels only when it runs them on a GPU, so
// `install/jittor_cuda.py prove-build` compiles this file instead on machines without one.
#include <cub/cub.cuh>
#include <thrust/iterator/counting_iterator.h>
#include <thrust/iterator/transform_iterator.h>

struct NonZero {
    __host__ __device__ bool operator()(float x) const { return x != 0; }
};

// other/code_softmax.py: a block-wide max without cub::Max.
// depthwise_conv.py: the lane index without cub::LaneId.
__global__ void block_max(const float* x, float* y) {
    typedef cub::BlockReduce<float, 256> BlockReduce;
    __shared__ typename BlockReduce::TempStorage temp_storage;
    float v = BlockReduce(temp_storage).Reduce(x[threadIdx.x], [](float a, float b) { return a > b ? a : b; });
    unsigned lane;
    asm("mov.u32 %0, %%laneid;" : "=r"(lane));
    if (threadIdx.x == 0 && lane == 0)
        *y = v;
}

// extern/cuda/cub/ops/cub_where_op.cc: DeviceSelect::Flagged over Thrust's iterators.
size_t where_temp_bytes(float* cond, int* out, int* count, int n) {
    thrust::counting_iterator<int> counting_itr(0);
    thrust::transform_iterator<NonZero, float*, bool> itr(cond, NonZero());
    size_t bytes = 0;
    cub::DeviceSelect::Flagged(nullptr, bytes, counting_itr, itr, out, count, n);
    return bytes;
}
