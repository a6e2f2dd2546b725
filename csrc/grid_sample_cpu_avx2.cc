// The AVX2 + FMA build of grid_sample_cpu.cc; setup.py compiles it with
// -mavx2 -mfma on x86-64, and jaxgridsample/_cpu_kernel.py registers it where
// the processor supports both.
#define JAXGRIDSAMPLE_ISA avx2
#include "grid_sample_cpu.cc"
