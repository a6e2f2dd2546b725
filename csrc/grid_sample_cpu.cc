// grid_sample's forward and first-order backward as XLA FFI handlers for the CPU.
//
// The same formulas as the JAX modules (jaxgridsample/_coordinates.py,
// _linear.py, _nearest.py, _cubic.py, _kernel.py), in the operation order of
// ATen's CPU kernels, written as the loops that XLA's CPU backend does not
// emit for a gather or a scatter-add: each point's taps are computed once, in
// SIMD, and shared by every channel, either kept in registers while every
// channel is read (the direct passes, most shapes) or stored in a table that
// each channel plane sweeps while it is in cache; the work is split over as
// many threads as XLA's intra-op pool has, run by the kernel's own workers
// (see Workers).
//
// Anatomy, as in the Python package:
//   * SIMD helpers (GCC/Clang vector extensions; AVX2 gathers, and runs of
//     plain loads for adjacent x taps, linear and cubic, where built);
//   * coordinates: unnormalise, sanitise non-finite values, pad (clip,
//     reflect) with the padding's derivative multiplier;
//   * one struct per interpolation family (Linear, Nearest, Cubic): the taps
//     of a grid value along one axis;
//   * TapTable and FillTaps: the taps of a block of points, the product over
//     the axes;
//   * the passes over a block (forward, grad_input, grad_grid) for the
//     channels-first and channels-last layouts;
//   * the worker threads and ParallelFor, and the FFI handlers.
//
// Built with -ffp-contract=off: the compiler must not fuse a multiply and an
// add that PyTorch rounds separately (one ulp decides floor() at a pixel
// centre). Where PyTorch's kernel does fuse, Fma says so.
//
// setup.py compiles this file once per instruction set (JAXGRIDSAMPLE_ISA:
// generic, and avx2 through grid_sample_cpu_avx2.cc on x86-64); each build
// exports its handlers under its own names, and jaxgridsample/_cpu_kernel.py
// registers the best one the processor supports.

#include <pthread.h>
#ifdef __linux__
#include <sched.h>
#include <sys/resource.h>
#include <sys/syscall.h>
#include <unistd.h>
#endif

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cerrno>
#include <cmath>
#include <condition_variable>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <limits>
#include <memory>
#include <mutex>
#include <thread>
#include <type_traits>
#include <vector>

#if defined(__AVX2__) && defined(__FMA__)
#include <immintrin.h>
#define JAXGRIDSAMPLE_AVX2 1
#endif

#include "xla/ffi/api/ffi.h"

#ifndef JAXGRIDSAMPLE_ISA
#define JAXGRIDSAMPLE_ISA generic
#endif
#define JAXGRIDSAMPLE_JOIN(name, isa) name##_##isa
#define JAXGRIDSAMPLE_NAME(name, isa) JAXGRIDSAMPLE_JOIN(name, isa)

namespace ffi = xla::ffi;

namespace jaxgridsample {
namespace {

enum class Padding : int32_t { kZeros = 0, kBorder = 1, kReflection = 2 };
enum class Mode : int32_t { kBilinear = 0, kNearest = 1, kBicubic = 2 };

// ---------------------------------------------------------------------------
// SIMD: 32 bytes of T (8 floats or 4 doubles) and the masks comparisons give.
// ---------------------------------------------------------------------------

template <typename T>
struct Simd {
  static constexpr int kLanes = 32 / static_cast<int>(sizeof(T));
  using Lane = std::conditional_t<sizeof(T) == 4, int32_t, int64_t>;
  typedef T Vec __attribute__((vector_size(32)));
  typedef Lane Mask __attribute__((vector_size(32)));       // -1 or 0 per lane
  typedef int32_t Index __attribute__((vector_size(4 * kLanes)));  // pixel offsets
};

// Eight pixel offsets as unsigned values, where a negative one compares as
// huge (the offsets of taps outside, and the index INT_MIN that a float
// beyond int32 converts to).
typedef uint32_t UnsignedIndex __attribute__((vector_size(32)));

template <typename T>
using Vec = typename Simd<T>::Vec;
template <typename T>
using Mask = typename Simd<T>::Mask;
template <typename T>
using Index = typename Simd<T>::Index;

template <typename T>
inline Vec<T> Broadcast(T x) {
  return Vec<T>{} + x;
}

template <typename T>
inline Vec<T> Select(Mask<T> mask, Vec<T> a, Vec<T> b) {
  return mask ? a : b;
}

template <typename T>
inline Vec<T> Abs(Vec<T> x) {
  return reinterpret_cast<Vec<T>>(reinterpret_cast<Mask<T>>(x) & std::numeric_limits<typename Simd<T>::Lane>::max());
}

// Min and Max keep a where the comparison fails (a NaN). vminps(b, a) and
// vmaxps(b, a) are exactly that; the compiler did not always see it.
template <typename T>
inline Vec<T> Min(Vec<T> a, Vec<T> b) {
#ifdef JAXGRIDSAMPLE_AVX2
  if constexpr (sizeof(T) == 4) {
    return reinterpret_cast<Vec<T>>(_mm256_min_ps(reinterpret_cast<__m256>(b), reinterpret_cast<__m256>(a)));
  } else {
    return reinterpret_cast<Vec<T>>(_mm256_min_pd(reinterpret_cast<__m256d>(b), reinterpret_cast<__m256d>(a)));
  }
#else
  return Select<T>(b < a, b, a);
#endif
}

template <typename T>
inline Vec<T> Max(Vec<T> a, Vec<T> b) {
#ifdef JAXGRIDSAMPLE_AVX2
  if constexpr (sizeof(T) == 4) {
    return reinterpret_cast<Vec<T>>(_mm256_max_ps(reinterpret_cast<__m256>(b), reinterpret_cast<__m256>(a)));
  } else {
    return reinterpret_cast<Vec<T>>(_mm256_max_pd(reinterpret_cast<__m256d>(b), reinterpret_cast<__m256d>(a)));
  }
#else
  return Select<T>(b > a, b, a);
#endif
}

#ifdef JAXGRIDSAMPLE_AVX2
// vroundps/vroundpd: exact, so the same results as the portable versions below.
template <int kRounding, typename T>
inline Vec<T> Round(Vec<T> x) {
  if constexpr (sizeof(T) == 4) {
    return reinterpret_cast<Vec<T>>(_mm256_round_ps(reinterpret_cast<__m256>(x), kRounding | _MM_FROUND_NO_EXC));
  } else {
    return reinterpret_cast<Vec<T>>(_mm256_round_pd(reinterpret_cast<__m256d>(x), kRounding | _MM_FROUND_NO_EXC));
  }
}

template <typename T>
inline Vec<T> RoundHalfEven(Vec<T> x) {
  return Round<_MM_FROUND_TO_NEAREST_INT, T>(x);
}

template <typename T>
inline Vec<T> Floor(Vec<T> x) {
  return Round<_MM_FROUND_TO_NEG_INF, T>(x);
}
#else
// Round half to even (nearbyint in the default rounding mode): adding and
// subtracting 2^(mantissa bits) leaves the rounded integer. Larger values are
// integers already.
template <typename T>
inline Vec<T> RoundHalfEven(Vec<T> x) {
  constexpr T kBig = sizeof(T) == 4 ? T(8388608.0) : T(4503599627370496.0);
  const Vec<T> magic = Select<T>(x < T(0), Broadcast<T>(-kBig), Broadcast<T>(kBig));
  return Select<T>(Abs<T>(x) < kBig, (x + magic) - magic, x);
}

template <typename T>
inline Vec<T> Floor(Vec<T> x) {
  const Vec<T> rounded = RoundHalfEven<T>(x);
  return Select<T>(rounded > x, rounded - T(1), rounded);
}
#endif

// a * b + c with one rounding.
template <typename T>
inline Vec<T> Fma(Vec<T> a, Vec<T> b, Vec<T> c) {
#ifdef JAXGRIDSAMPLE_AVX2
  if constexpr (sizeof(T) == 4) {
    return reinterpret_cast<Vec<T>>(_mm256_fmadd_ps(reinterpret_cast<__m256>(a), reinterpret_cast<__m256>(b),
                                                    reinterpret_cast<__m256>(c)));
  } else {
    return reinterpret_cast<Vec<T>>(_mm256_fmadd_pd(reinterpret_cast<__m256d>(a), reinterpret_cast<__m256d>(b),
                                                    reinterpret_cast<__m256d>(c)));
  }
#else
  Vec<T> result;
  for (int i = 0; i < Simd<T>::kLanes; ++i) result[i] = std::fma(a[i], b[i], c[i]);
  return result;
#endif
}

template <typename T>
inline Vec<T> Fmod(Vec<T> a, Vec<T> b) {
  Vec<T> result;
  for (int i = 0; i < Simd<T>::kLanes; ++i) result[i] = std::fmod(a[i], b[i]);
  return result;
}

// Whether any lane of a mask is set.
template <typename T>
inline bool AnyLane(Mask<T> mask) {
#ifdef JAXGRIDSAMPLE_AVX2
  const __m256i bits = reinterpret_cast<__m256i>(mask);
  return !_mm256_testz_si256(bits, bits);
#else
  bool any = false;
  for (int i = 0; i < Simd<T>::kLanes; ++i) any |= mask[i] != 0;
  return any;
#endif
}

// Up to kLanes values at p[0], p[stride], ...; lanes from n on are 0.
template <typename T>
inline Vec<T> LoadStrided(const T* p, int stride, int n) {
  Vec<T> result{};
  for (int i = 0; i < Simd<T>::kLanes; ++i) result[i] = i < n ? p[i * stride] : T(0);
  return result;
}

// The x and y components of kLanes points (x, y) at p, deinterleaved.
template <typename T>
inline void LoadPairs(const T* p, Vec<T>* x, Vec<T>* y) {
#ifdef JAXGRIDSAMPLE_AVX2
  if constexpr (sizeof(T) == 4) {
    const __m256 a = _mm256_loadu_ps(p), b = _mm256_loadu_ps(p + 8);
    // Within 128-bit halves: [x0 x1 x4 x5 | x2 x3 x6 x7]; then the middle quarters swap.
    const __m256 xs = _mm256_shuffle_ps(a, b, _MM_SHUFFLE(2, 0, 2, 0));
    const __m256 ys = _mm256_shuffle_ps(a, b, _MM_SHUFFLE(3, 1, 3, 1));
    *x = reinterpret_cast<Vec<T>>(_mm256_castpd_ps(_mm256_permute4x64_pd(_mm256_castps_pd(xs), 0xD8)));
    *y = reinterpret_cast<Vec<T>>(_mm256_castpd_ps(_mm256_permute4x64_pd(_mm256_castps_pd(ys), 0xD8)));
  } else {
    const __m256d a = _mm256_loadu_pd(p), b = _mm256_loadu_pd(p + 4);
    // [x0 x2 x1 x3], then the middle quarters swap.
    *x = reinterpret_cast<Vec<T>>(_mm256_permute4x64_pd(_mm256_unpacklo_pd(a, b), 0xD8));
    *y = reinterpret_cast<Vec<T>>(_mm256_permute4x64_pd(_mm256_unpackhi_pd(a, b), 0xD8));
  }
#else
  *x = LoadStrided(p, 2, Simd<T>::kLanes);
  *y = LoadStrided(p + 1, 2, Simd<T>::kLanes);
#endif
}

// LoadPairs' inverse: writes (x[i], y[i]) pairs to p[0 .. 2 kLanes), two
// stores instead of 2 kLanes single ones for the grid gradient. Two threads,
// backward alone, one process switching between the two: 4 x 3 x 384^2
// border 10.3 -> 8.5 ms, 32 x 1 x 28^2 0.215 -> 0.178, 16 x 3 x 64^2 0.51 ->
// 0.49.
template <typename T>
inline void StorePairs(T* p, Vec<T> x, Vec<T> y) {
#ifdef JAXGRIDSAMPLE_AVX2
  if constexpr (sizeof(T) == 4) {
    const __m256 a = reinterpret_cast<__m256>(x), b = reinterpret_cast<__m256>(y);
    const __m256 low = _mm256_unpacklo_ps(a, b);   // x0 y0 x1 y1 | x4 y4 x5 y5
    const __m256 high = _mm256_unpackhi_ps(a, b);  // x2 y2 x3 y3 | x6 y6 x7 y7
    _mm256_storeu_ps(p, _mm256_permute2f128_ps(low, high, 0x20));
    _mm256_storeu_ps(p + 8, _mm256_permute2f128_ps(low, high, 0x31));
  } else {
    const __m256d a = reinterpret_cast<__m256d>(x), b = reinterpret_cast<__m256d>(y);
    const __m256d low = _mm256_unpacklo_pd(a, b);   // x0 y0 | x2 y2
    const __m256d high = _mm256_unpackhi_pd(a, b);  // x1 y1 | x3 y3
    _mm256_storeu_pd(p, _mm256_permute2f128_pd(low, high, 0x20));
    _mm256_storeu_pd(p + 4, _mm256_permute2f128_pd(low, high, 0x31));
  }
#else
  for (int i = 0; i < Simd<T>::kLanes; ++i) {
    p[2 * i] = x[i];
    p[2 * i + 1] = y[i];
  }
#endif
}

template <typename V>
inline void Store(void* destination, const V& value) {
  std::memcpy(destination, &value, sizeof(V));
}

// A pixel offset (-1 outside) as a clamped offset and a bit mask as wide as T.
template <typename T>
using MaskBits = std::conditional_t<sizeof(T) == 4, uint32_t, uint64_t>;

inline int32_t Clamped(int32_t offset) { return offset & ~(offset >> 31); }

template <typename T>
inline MaskBits<T> InsideBits(int32_t offset) {
  return static_cast<MaskBits<T>>(static_cast<int64_t>(~(offset >> 31)));
}

// value where the mask is all ones, +0 where it is zero: a select without a
// branch (a random grid's outside taps defeat branch prediction) and without
// a product (0 * inf is NaN; ATen skips outside taps).
template <typename T>
inline T Masked(T value, MaskBits<T> mask) {
  MaskBits<T> bits;
  std::memcpy(&bits, &value, sizeof(T));
  bits &= mask;
  std::memcpy(&value, &bits, sizeof(T));
  return value;
}

// ---------------------------------------------------------------------------
// Coordinates (_coordinates.py), on kLanes grid values at a time.
//
// kRank (2 or 3) selects the operation order of PyTorch's vectorised 2-D
// kernel or of its scalar 3-D kernel: they agree to a few ulps, and one ulp
// decides floor() for a coordinate on a pixel centre.
// ---------------------------------------------------------------------------

struct Axis {
  int64_t size;
  bool align_corners;
};

// dp/dg of Unnormalize.
template <typename T>
inline T UnnormalizeScale(const Axis& axis) {
  const T size = T(axis.size);
  return axis.align_corners ? (size - T(1)) / T(2) : size / T(2);
}

// Maps grid values to pixel coordinates.
template <typename T, int kRank>
inline Vec<T> Unnormalize(Vec<T> g, T size, bool align_corners) {
  const Vec<T> a = g + T(1);
  if (kRank == 2) {
    // The 2-D kernel's compiler fuses (g + 1) * (S / 2) - 0.5 into one fma.
    return align_corners ? a * ((size - T(1)) / T(2)) : Fma<T>(a, Broadcast<T>(size / T(2)), Broadcast<T>(-0.5));
  }
  return align_corners ? (a / T(2)) * (size - T(1)) : (a * size - T(1)) / T(2);
}

// Our contract for non-finite coordinates (SPEC section 9): outside under
// zeros padding; pixel 0 for NaN and -inf, the last pixel for +inf otherwise.
// *finite is where p was finite (the gradient is zero elsewhere). Under zeros
// padding p stays as it is: a non-finite coordinate's taps fail every inside
// test (NaN compares false), so their weights, slopes and offsets are masked
// out as for any other point outside.
template <typename T>
inline Mask<T> IsFinite(Vec<T> p) {
  return Abs<T>(p) <= std::numeric_limits<T>::max();  // false for NaN
}

template <typename T, Padding kPad>
inline Vec<T> Sanitize(Vec<T> p, T size, Mask<T>* finite) {
  *finite = IsFinite<T>(p);
  if (kPad == Padding::kZeros) return p;
  return Select<T>(*finite, p, Select<T>(p > T(0), Broadcast<T>(size - T(1)), Vec<T>{}));
}

// Clamps to [0, size - 1], NaN to 0; the multiplier is 0 on and beyond the
// bounds and for NaN (ATen's clip_coordinates_set_grad).
template <typename T>
inline Vec<T> Clip(Vec<T> p, T size, Vec<T>* multiplier) {
  const T upper = size - T(1);
  *multiplier = Select<T>((p > T(0)) & (p < upper), Broadcast<T>(1), Vec<T>{});
  return Min<T>(Broadcast<T>(upper), Max<T>(Vec<T>{}, p));  // Max keeps 0 where p is NaN
}

// Reflects into [0, S - 1] (align_corners) or [-0.5, S - 0.5].
template <typename T, int kRank>
inline Vec<T> Reflect(Vec<T> p, T size, bool align_corners, Vec<T>* multiplier) {
  if (align_corners && size <= T(1)) {
    // An empty interval: everything reflects onto pixel 0.
    *multiplier = Vec<T>{};
    return Vec<T>{};
  }
  const T low = align_corners ? T(0) : T(-0.5);
  const T span = align_corners ? size - T(1) : size;
  const Vec<T> shifted = p - low;
  const Vec<T> sign = Select<T>(shifted < T(0), Broadcast<T>(-1), Broadcast<T>(1));
  const Vec<T> distance = Abs<T>(shifted);
  Vec<T> folded;
  if (kRank == 2) {
    // The vectorised kernel folds by twice the span, then once more if the
    // remainder lies in the far half. Within twice the span (most points) the
    // rounded quotient is below 1 (a float below the span is at least an ulp
    // below it), so its floor is 0 and the remainder the distance itself:
    // the division is skipped unless a lane lies farther out. One-channel
    // 4 x 1 x 256^2 reflection, two threads: 0.34-0.36 -> 0.31 ms (PyTorch 0.32).
    // Its compiler fuses distance - flips * twice_span into one fma: far
    // outside a large image (x = -1e6, width 731) the product is inexact,
    // and a second rounding moved the remainder across the far half.
    const T twice_span = T(2) * span;
    Vec<T> extra = distance;
    if (AnyLane<T>(distance >= twice_span)) {
      const Vec<T> flips = Floor<T>(distance / twice_span);  // floor = trunc here
      extra = Fma<T>(-flips, Broadcast<T>(twice_span), distance);
    }
    const Vec<T> reflected = twice_span - extra;
    const Mask<T> flip = extra > reflected;
    folded = Select<T>(flip, reflected, extra);
    *multiplier = Select<T>(flip, -sign, sign);
  } else {
    // The scalar kernel counts single flips.
    const Vec<T> extra = Fmod<T>(distance, Broadcast<T>(span));
    const Mask<T> odd = Fmod<T>(Floor<T>(distance / span), Broadcast<T>(2)) == T(1);
    folded = Select<T>(odd, span - extra, extra);
    *multiplier = Select<T>(odd, -sign, sign);
  }
  return folded + low;
}

// Applies the padding rule; *multiplier is d(padded)/dp.
template <typename T, Padding kPad, int kRank>
inline Vec<T> Pad(Vec<T> p, T size, bool align_corners, Vec<T>* multiplier) {
  if (kPad == Padding::kZeros) {
    *multiplier = Broadcast<T>(1);
    return p;
  }
  if (kPad == Padding::kBorder) return Clip<T>(p, size, multiplier);
  Vec<T> reflect_multiplier, clip_multiplier;
  const Vec<T> clipped = Clip<T>(Reflect<T, kRank>(p, size, align_corners, &reflect_multiplier), size,
                                 &clip_multiplier);
  *multiplier = reflect_multiplier * clip_multiplier;
  return clipped;
}

// The padded pixel coordinate of grid values, for the families that pad before
// choosing taps (linear, nearest). *finite and *multiplier as above.
template <typename T, Padding kPad, int kRank>
inline Vec<T> PaddedCoordinate(Vec<T> g, const Axis& axis, Mask<T>* finite, Vec<T>* multiplier) {
  const T size = T(axis.size);
  const Vec<T> p = Unnormalize<T, kRank>(g, size, axis.align_corners);
  if (kPad == Padding::kBorder) {
    // Clip sends NaN and -inf to 0 and +inf to size - 1 by itself.
    *finite = IsFinite<T>(p);
    return Clip<T>(p, size, multiplier);
  }
  return Pad<T, kPad, kRank>(Sanitize<T, kPad>(p, size, finite), size, axis.align_corners, multiplier);
}

// ---------------------------------------------------------------------------
// Interpolation families: the taps of kLanes grid values along one axis.
// ---------------------------------------------------------------------------

template <typename T, int kTaps>
struct AxisTaps {
  Vec<T> position[kTaps];  // integer-valued; outside [0, size - 1] reads zero
  Vec<T> weight[kTaps];
  Vec<T> slope[kTaps];  // d weight / d grid value (families with kHasSlope)
};

// Bilinear/trilinear (_linear.py): taps floor(p) and floor(p) + 1 of the
// padded coordinate, weights 1 - t and t, slopes -m and m.
struct Linear {
  static constexpr int kTaps = 2;
  static constexpr bool kHasSlope = true;
  // Whether tap k of an axis is always tap 0 plus k pixels.
  template <Padding kPad>
  static constexpr bool kAdjacentTaps = true;

  template <typename T, Padding kPad, int kRank>
  static void Taps(Vec<T> g, const Axis& axis, AxisTaps<T, 2>* taps) {
    Mask<T> finite;
    Vec<T> padding_multiplier;
    const Vec<T> p = PaddedCoordinate<T, kPad, kRank>(g, axis, &finite, &padding_multiplier);
    const Vec<T> m = Select<T>(finite, padding_multiplier * UnnormalizeScale<T>(axis), Vec<T>{});
    const Vec<T> west = Floor<T>(p);
    const Vec<T> t = p - west;
    taps->position[0] = west;
    taps->position[1] = west + T(1);
    taps->weight[0] = T(1) - t;
    taps->weight[1] = t;
    taps->slope[0] = -m;
    taps->slope[1] = m;
  }
};

// Nearest (_nearest.py): one tap at the padded coordinate rounded half to even.
struct Nearest {
  static constexpr int kTaps = 1;
  static constexpr bool kHasSlope = false;
  template <Padding kPad>
  static constexpr bool kAdjacentTaps = true;

  template <typename T, Padding kPad, int kRank>
  static void Taps(Vec<T> g, const Axis& axis, AxisTaps<T, 1>* taps) {
    Mask<T> finite;
    Vec<T> unused;
    taps->position[0] = RoundHalfEven<T>(PaddedCoordinate<T, kPad, kRank>(g, axis, &finite, &unused));
    taps->weight[0] = Broadcast<T>(1);
    taps->slope[0] = Vec<T>{};
  }
};

// Bicubic/tricubic (_cubic.py): Keys' cubic convolution with A = -0.75 on the
// unpadded coordinate; each of the four taps is padded on its own.
struct Cubic {
  static constexpr int kTaps = 4;
  static constexpr bool kHasSlope = true;
  // Border and reflection pad each tap on its own.
  template <Padding kPad>
  static constexpr bool kAdjacentTaps = kPad == Padding::kZeros;

  // |d| <= 1: (A + 2) d^3 - (A + 3) d^2 + 1, and its derivative.
  template <typename T>
  static Vec<T> Near(Vec<T> x) { return (T(1.25) * x - T(2.25)) * x * x + T(1); }
  template <typename T>
  static Vec<T> NearSlope(Vec<T> x) { return (T(3.75) * x - T(4.5)) * x; }
  // 1 < |d| < 2: A d^3 - 5A d^2 + 8A d - 4A, and its derivative.
  template <typename T>
  static Vec<T> Far(Vec<T> x) { return ((T(-0.75) * x - T(-3.75)) * x + T(-6)) * x - T(-3); }
  template <typename T>
  static Vec<T> FarSlope(Vec<T> x) { return (T(-2.25) * x - T(-7.5)) * x + T(-6); }

  template <typename T, Padding kPad, int kRank>
  static void Taps(Vec<T> g, const Axis& axis, AxisTaps<T, 4>* taps) {
    const T size = T(axis.size);
    Mask<T> finite;
    const Vec<T> p = Sanitize<T, kPad>(Unnormalize<T, kRank>(g, size, axis.align_corners), size, &finite);
    const Vec<T> scale = Select<T>(finite, Broadcast<T>(UnnormalizeScale<T>(axis)), Vec<T>{});
    const Vec<T> first = Floor<T>(p);
    const Vec<T> t = p - first;
    for (int k = 0; k < 4; ++k) {
      Vec<T> unused;
      taps->position[k] = Pad<T, kPad, kRank>(first + T(k - 1), size, axis.align_corners, &unused);
    }
    taps->weight[0] = Far<T>(T(1) + t);
    taps->weight[1] = Near<T>(t);
    taps->weight[2] = Near<T>(T(1) - t);
    taps->weight[3] = Far<T>(T(2) - t);
    taps->slope[0] = FarSlope<T>(T(1) + t) * scale;
    taps->slope[1] = NearSlope<T>(t) * scale;
    taps->slope[2] = -NearSlope<T>(T(1) - t) * scale;
    taps->slope[3] = -FarSlope<T>(T(2) - t) * scale;
  }
};

// Whether padding keeps tap k of an axis inside, whatever the coordinate:
// border and reflection pad every tap that is padded on its own (nearest's
// only tap, cubic's four, linear's first); linear's second tap lies past the
// last pixel when the first is on it.
template <typename Family, Padding kPad>
constexpr bool PaddingKeepsInside(int k) {
  return kPad != Padding::kZeros && (k == 0 || !Family::template kAdjacentTaps<kPad>);
}

constexpr int Power(int base, int exponent) { return exponent == 0 ? 1 : base * Power(base, exponent - 1); }

// ---------------------------------------------------------------------------
// The taps of a block of points: the product of the per-axis taps.
// ---------------------------------------------------------------------------

// Shapes of one call, with any leading batch axes folded into num_batch.
struct Geometry {
  int64_t num_batch;
  int64_t channels;
  int64_t num_points;  // output points per sample
  int64_t num_pixels;  // input pixels per sample and channel (< 2^30)
  bool channels_last;
};

// The taps of a block of points, tap-major: what the passes over a block read.
// Independent of the family and padding that filled it, so that the passes
// are compiled once per tap count.
template <typename T, int kTapCount, int kRank>
struct TapTable {
  using Value = T;
  static constexpr int kTaps = kTapCount;
  static constexpr int kNdim = kRank;
  static constexpr int kLanes = Simd<T>::kLanes;
  // Points per block: every channel plane is swept over the whole block while
  // it is in cache, and the tables (about 8 KiB per tap) stay in L2.
  static constexpr int kPoints = std::max(64, std::min(2048, 8192 / kTaps));

  int count;                       // points in this block
  int32_t offset[kTaps][kPoints];  // flat pixel index, -1 where the tap lies outside
  T weight[kTaps][kPoints];        // 0 where outside
  T slope[kNdim][kTaps][kPoints];  // d weight / d grid value per spatial axis; 0 where outside
};

template <typename T, typename Family, int kNdim>
using TableFor = TapTable<T, Power(Family::kTaps, kNdim), kNdim>;

// The taps of kLanes points, in registers.
template <typename T, int kTapCount, int kRank>
struct LaneTaps {
  Index<T> offset[kTapCount];  // flat pixel index, -1 where the tap lies outside
  Index<T> inside[kTapCount];  // -1 where the tap lies inside, else 0
  Index<T> read[kTapCount];    // flat pixel index, 0 where the tap lies outside
  Vec<T> weight[kTapCount];    // 0 where outside
  Vec<T> slope[kRank][kTapCount];  // d weight / d grid value per spatial axis; 0 where outside
  // Families with adjacent taps: the lanes whose x taps lie partly inside,
  // partly outside (where a run of them cannot be read as one).
  Mask<T> split_x;
};

template <typename T, typename Family, int kNdim>
using LaneTapsFor = LaneTaps<T, Power(Family::kTaps, kNdim), kNdim>;

// Row-major pixel strides of the spatial axes.
template <int kNdim>
struct PixelStrides {
  int32_t stride[kNdim];
  explicit PixelStrides(const Axis* axes) {
    for (int a = kNdim - 1, pixels = 1; a >= 0; --a) {
      stride[a] = pixels;
      pixels *= static_cast<int32_t>(axes[a].size);
    }
  }
};

// The taps of ``count`` (at most kLanes) points of a grid (points, kNdim), x
// first, starting at ``points``: the product of each axis's taps. Slopes only
// if kSlopes: a compile-time choice, so that the forward computes no
// derivatives at all; and always inlined, so that the per-axis constants are
// hoisted out of the caller's loop (not inlined, the nearest and reflection
// forwards spent up to 40% of their time here).
template <typename T, typename Family, int kNdim, Padding kPad, bool kSlopes>
__attribute__((always_inline)) inline void ComputeLaneTaps(const T* points, int count, const Axis* axes,
                                                           const PixelStrides<kNdim>& strides,
                                                           LaneTapsFor<T, Family, kNdim>* out) {
  constexpr int kTapsPerAxis = Family::kTaps;
  constexpr int kTaps = Power(kTapsPerAxis, kNdim);
  constexpr bool kAdjacent = Family::template kAdjacentTaps<kPad>;
  AxisTaps<T, kTapsPerAxis> taps[kNdim];
  Mask<T> inside[kNdim][kTapsPerAxis];
  Index<T> index[kNdim][kTapsPerAxis];
  Vec<T> components[kNdim];  // grid component 0 is x, the last spatial axis
  if (kNdim == 2 && count == Simd<T>::kLanes) {
    LoadPairs(points, &components[1], &components[0]);
  } else {
    for (int a = 0; a < kNdim; ++a) components[a] = LoadStrided(points + (kNdim - 1 - a), kNdim, count);
  }
  for (int a = 0; a < kNdim; ++a) {
    const Vec<T> g = components[a];
    Family::template Taps<T, kPad, kNdim>(g, axes[a], &taps[a]);
    const T upper = T(axes[a].size - 1);
    for (int k = 0; k < kTapsPerAxis; ++k) {
      const Vec<T> position = taps[a].position[k];
      // Taps that padding keeps inside need no test. Otherwise compared as
      // floating point, where a huge coordinate never overflows; adjacent
      // taps compare tap 0 with shifted bounds (the same answer for every
      // value, NaN and infinities included; no additions).
      const bool padded_inside = PaddingKeepsInside<Family, kPad>(k);
      if (padded_inside) {
        inside[a][k] = Mask<T>{} - 1;
      } else if (kAdjacent) {
        const Vec<T> first = taps[a].position[0];
        inside[a][k] = kPad != Padding::kZeros ? first <= upper - T(k)
                                                : (first >= T(-k)) & (first <= upper - T(k));
      } else {
        inside[a][k] = (position >= T(0)) & (position <= upper);
      }
      if (padded_inside) {
        index[a][k] = __builtin_convertvector(position, Index<T>);  // within [0, size - 1]
      } else if (!kAdjacent || k == 0) {
        // Clamped (adjacent taps: to a few pixels beyond the edges, enough to
        // keep the tap sums below in range) before the integer conversion.
        const T low = kAdjacent ? T(-kTapsPerAxis) : T(0);
        const T high = kAdjacent ? upper + T(1) : upper;
        index[a][k] = __builtin_convertvector(Min<T>(Max<T>(position, Broadcast<T>(low)), Broadcast<T>(high)),
                                              Index<T>);
      }
    }
  }
  // Adjacent taps: one flat index per point, then a constant per tap. An
  // index that lies outside is never read (the offset becomes -1 below).
  Index<T> first_flat{};
  if (kAdjacent) {
    for (int a = 0; a < kNdim; ++a) first_flat += index[a][0] * strides.stride[a];
    out->split_x = Mask<T>{};
    for (int k = 1; k < kTapsPerAxis; ++k) out->split_x |= inside[kNdim - 1][k] ^ inside[kNdim - 1][0];
  }
  for (int t = 0; t < kTaps; ++t) {
    int digit[kNdim];
    for (int a = kNdim - 1, rest = t; a >= 0; --a, rest /= kTapsPerAxis) digit[a] = rest % kTapsPerAxis;
    Mask<T> ok = inside[0][digit[0]];
    Vec<T> w = taps[0].weight[digit[0]];
    for (int a = 1; a < kNdim; ++a) {
      ok &= inside[a][digit[a]];
      w *= taps[a].weight[digit[a]];
    }
    Index<T> flat;
    if (kAdjacent) {
      int32_t shift = 0;
      for (int a = 0; a < kNdim; ++a) shift += digit[a] * strides.stride[a];
      flat = first_flat + shift;
    } else {
      flat = index[0][digit[0]] * strides.stride[0];
      for (int a = 1; a < kNdim; ++a) flat += index[a][digit[a]] * strides.stride[a];
    }
    out->inside[t] = __builtin_convertvector(ok, Index<T>);
    out->offset[t] = out->inside[t] ? flat : Index<T>{} - 1;
    out->read[t] = flat & out->inside[t];
    out->weight[t] = Select<T>(ok, w, Vec<T>{});
    if (Family::kHasSlope && kSlopes) {
      for (int s = 0; s < kNdim; ++s) {
        // The weight with axis s's factor replaced by its derivative.
        Vec<T> d = s == 0 ? taps[0].slope[digit[0]] : taps[0].weight[digit[0]];
        for (int a = 1; a < kNdim; ++a) d *= a == s ? taps[a].slope[digit[a]] : taps[a].weight[digit[a]];
        out->slope[s][t] = Select<T>(ok, d, Vec<T>{});
      }
    }
  }
}

// Fills ``table`` with points [first, first + count) of one sample's grid
// (num_points, kNdim). Slopes only if with_slopes.
template <typename T, typename Family, int kNdim, Padding kPad>
void FillTaps(TableFor<T, Family, kNdim>* table, const T* grid, int64_t first, int count, const Axis* axes,
              bool with_slopes) {
  constexpr int kTaps = Power(Family::kTaps, kNdim);
  const PixelStrides<kNdim> strides(axes);
  table->count = count;
  LaneTapsFor<T, Family, kNdim> lanes;
  for (int b = 0; b < count; b += Simd<T>::kLanes) {
    if (with_slopes) {
      ComputeLaneTaps<T, Family, kNdim, kPad, true>(grid + (first + b) * kNdim, count - b, axes, strides, &lanes);
    } else {
      ComputeLaneTaps<T, Family, kNdim, kPad, false>(grid + (first + b) * kNdim, count - b, axes, strides, &lanes);
    }
    for (int t = 0; t < kTaps; ++t) {
      Store(&table->offset[t][b], lanes.offset[t]);
      Store(&table->weight[t][b], lanes.weight[t]);
      if (Family::kHasSlope && with_slopes) {
        for (int s = 0; s < kNdim; ++s) Store(&table->slope[s][t][b], lanes.slope[s][t]);
      }
    }
  }
}

// ---------------------------------------------------------------------------
// Reading taps: kLanes values of one channel plane at a time.
// ---------------------------------------------------------------------------

#ifdef JAXGRIDSAMPLE_AVX2
// The values at kLanes offsets of a plane, 0 where an offset is -1.

inline __m256 Gather(const float* plane, __m256i index) {
  const __m256i inside = _mm256_cmpgt_epi32(index, _mm256_set1_epi32(-1));
  return _mm256_mask_i32gather_ps(_mm256_setzero_ps(), plane, index, _mm256_castsi256_ps(inside), 4);
}

inline __m256d Gather(const double* plane, __m128i index) {
  const __m256i inside = _mm256_cvtepi32_epi64(_mm_cmpgt_epi32(index, _mm_set1_epi32(-1)));
  return _mm256_mask_i32gather_pd(_mm256_setzero_pd(), plane, index, _mm256_castsi256_pd(inside), 8);
}

template <typename T>
inline Vec<T> GatherVec(const T* plane, Index<T> offset);

// The values at kLanes offsets that all lie inside: an unmasked gather.
template <typename T>
inline Vec<T> GatherInside(const T* plane, Index<T> offset) {
  if constexpr (sizeof(T) == 4) {
    return reinterpret_cast<Vec<T>>(_mm256_i32gather_ps(plane, reinterpret_cast<__m256i>(offset), 4));
  } else {
    return reinterpret_cast<Vec<T>>(_mm256_i32gather_pd(plane, reinterpret_cast<__m128i>(offset), 8));
  }
}

// Whether padding keeps every tap inside (nearest, cubic; not linear).
template <typename Family, Padding kPad>
constexpr bool kEveryTapInside = PaddingKeepsInside<Family, kPad>(Family::kTaps - 1);

template <typename T>
inline Vec<T> GatherVec(const T* plane, const int32_t* offset) {
  Index<T> index;
  std::memcpy(&index, offset, sizeof(index));
  return GatherVec<T>(plane, index);
}

template <typename T>
inline Vec<T> GatherVec(const T* plane, Index<T> offset) {
  using Register = std::conditional_t<sizeof(T) == 4, __m256i, __m128i>;
  return reinterpret_cast<Vec<T>>(Gather(plane, reinterpret_cast<Register>(offset)));
}
// Runs of adjacent x taps, read with plain loads: the linear family's two x
// taps of a row (pixels o, o + 1), the cubic family's four (o .. o + 3). On a
// random grid the forward waited on gathers more than on anything else
// (perf, cpu-clock): a gather is microcoded and keeps few misses in flight,
// while eight 8- or 16-byte loads per row replace two or four 8-float
// gathers. Needs a plane of at least kRun pixels (a run outside reads pixels
// 0 .. kRun - 1, then masks them).

// A 4x4 transpose in each 128-bit half: r[i] holds (a, b, c, d) of item i
// and of item i + 4; v[k] then holds element k of items 0..3 | 4..7.
inline void TransposeHalves(const __m256* r, __m256* v) {
  const __m256 t0 = _mm256_unpacklo_ps(r[0], r[1]);  // a0 a1 b0 b1
  const __m256 t1 = _mm256_unpackhi_ps(r[0], r[1]);  // c0 c1 d0 d1
  const __m256 t2 = _mm256_unpacklo_ps(r[2], r[3]);
  const __m256 t3 = _mm256_unpackhi_ps(r[2], r[3]);
  v[0] = _mm256_shuffle_ps(t0, t2, _MM_SHUFFLE(1, 0, 1, 0));  // a0 a1 a2 a3
  v[1] = _mm256_shuffle_ps(t0, t2, _MM_SHUFFLE(3, 2, 3, 2));
  v[2] = _mm256_shuffle_ps(t1, t3, _MM_SHUFFLE(1, 0, 1, 0));
  v[3] = _mm256_shuffle_ps(t1, t3, _MM_SHUFFLE(3, 2, 3, 2));
}

// The kRun taps from 8 offsets o: values[k] holds plane[o + k] for the 8
// points, 0 where inside is 0.
template <int kRun, typename At>
inline void ReadRunAt(const float* plane, const At& at, Index<float> inside, Vec<float>* values) {
  static_assert(kRun == 2 || kRun == 4);
  __m256 v[kRun];
  if constexpr (kRun == 2) {
    auto two = [&](int i) {  // the pairs at at[i] and at[i + 1]
      const __m128 low = _mm_castpd_ps(_mm_load_sd(reinterpret_cast<const double*>(plane + at[i])));
      return _mm_loadh_pi(low, reinterpret_cast<const __m64*>(plane + at[i + 1]));
    };
    // Points 0, 1, 4, 5 and 2, 3, 6, 7, so that one shuffle per tap leaves
    // the taps in point order.
    const __m256 low = _mm256_set_m128(two(4), two(0));   // a0 b0 a1 b1 | a4 b4 a5 b5
    const __m256 high = _mm256_set_m128(two(6), two(2));  // a2 b2 a3 b3 | a6 b6 a7 b7
    v[0] = _mm256_shuffle_ps(low, high, _MM_SHUFFLE(2, 0, 2, 0));  // a0 a1 a2 a3 | a4 a5 a6 a7
    v[1] = _mm256_shuffle_ps(low, high, _MM_SHUFFLE(3, 1, 3, 1));
  } else {
    __m256 r[4];  // r[i]: the run of point i | the run of point i + 4
    for (int i = 0; i < 4; ++i) r[i] = _mm256_set_m128(_mm_loadu_ps(plane + at[i + 4]), _mm_loadu_ps(plane + at[i]));
    TransposeHalves(r, v);
  }
  const __m256 mask = _mm256_castsi256_ps(reinterpret_cast<__m256i>(inside));
  for (int k = 0; k < kRun; ++k) values[k] = reinterpret_cast<Vec<float>>(_mm256_and_ps(v[k], mask));
}

template <int kRun>
inline void ReadRun(const float* plane, Index<float> read, Index<float> inside, Vec<float>* values) {
  // Unsigned (the masked offsets are never negative): an offset then takes
  // one extract, zero-extended for free, instead of extract, sign-extend and
  // shift.
  ReadRunAt<kRun>(plane, reinterpret_cast<UnsignedIndex>(read), inside, values);
}

// Runs of the cubic family's x taps under border or reflection padding,
// which pads each tap on its own: near an edge, and everywhere outside, a
// row's four taps repeat or run backwards, so ReadRun does not apply. Padded,
// they still lie within four adjacent pixels (either padding maps three
// adjacent coordinates into an interval of three pixels), so one 16-byte
// load per point and row reads them all, and a permutation within each
// 128-bit half puts them in tap order (no permutation where every lane's
// taps are in order). On a random grid most groups of 8 points have a lane
// near an edge or outside, and these groups were read with gathers: one
// thread, 4 x 3 x 256^2 with the grid in [-1.1, 1.1], border 3.78 -> 3.28
// ms and reflection 4.62 -> 4.0 (PyTorch's kernel 4.29 and 5.84), level in
// [-0.95, 0.95]. In the backward, whose reads are a smaller part, the check
// cost as much as it saved, and it keeps ReadRun and gathers.
template <int kTaps>
struct FoldedRuns {
  static constexpr int kRows = kTaps / 4;
  Index<float> start[kRows];  // per row of taps: the first pixel each lane reads
  __m256i order[4];           // order[i]: where each tap lies in the runs of points i | i + 4
  bool folds;                 // whether any lane's taps are out of order
};

// Fills ``runs`` from the taps' offsets (every tap inside, as border and
// reflection leave them) of a plane of num_pixels >= 4 pixels. False if some
// lane's taps do not fit: a row's taps spread over more than four pixels, or
// rows whose taps sit differently (coordinates so large that float spacing
// exceeds a pixel); those groups read with gathers.
template <int kTaps>
inline bool FoldRuns(const Index<float>* offset, int32_t num_pixels, FoldedRuns<kTaps>* runs) {
  constexpr int kRows = FoldedRuns<kTaps>::kRows;
  Index<float> lowest[kRows];
  Index<float> excess{};  // how far the highest run would read past the plane
  for (int r = 0; r < kRows; ++r) {
    const Index<float>* o = offset + 4 * r;
    const Index<float> low01 = o[1] < o[0] ? o[1] : o[0];
    const Index<float> low23 = o[3] < o[2] ? o[3] : o[2];
    lowest[r] = low23 < low01 ? low23 : low01;
    const Index<float> over = lowest[r] - (num_pixels - 4);
    excess = over > excess ? over : excess;
  }
  // Each run starts early by the excess, so that none reads past the plane.
  Index<float> position[4];
  for (int k = 0; k < 4; ++k) position[k] = offset[k] - (lowest[0] - excess);
  Index<float> bad{};
  for (int k = 0; k < 4; ++k) bad |= reinterpret_cast<Index<float>>(reinterpret_cast<UnsignedIndex>(position[k]) > 3u);
  for (int r = 0; r < kRows; ++r) {
    runs->start[r] = lowest[r] - excess;
    bad |= runs->start[r] < 0;
    for (int k = 1; k < 4; ++k) bad |= (offset[4 * r + k] - runs->start[r]) != position[k];
  }
  if (AnyLane<float>(bad)) return false;
  Index<float> folds{};
  for (int k = 0; k < 4; ++k) folds |= position[k] != k;
  runs->folds = AnyLane<float>(folds);
  __m256 point_major[4];
  __m256 tap_major[4];
  for (int k = 0; k < 4; ++k) tap_major[k] = reinterpret_cast<__m256>(position[k]);
  TransposeHalves(tap_major, point_major);  // the transpose is its own inverse
  for (int i = 0; i < 4; ++i) runs->order[i] = _mm256_castps_si256(point_major[i]);
  return true;
}

// The four taps of one row of taps of 8 points, in tap order, from the runs
// FoldRuns found.
template <int kTaps, bool kFolds = true>
inline void ReadFoldedRun(const float* plane, const FoldedRuns<kTaps>& runs, int row, Vec<float>* values) {
  const UnsignedIndex at = reinterpret_cast<UnsignedIndex>(runs.start[row]);
  __m256 r[4];
  for (int i = 0; i < 4; ++i) {
    r[i] = _mm256_set_m128(_mm_loadu_ps(plane + at[i + 4]), _mm_loadu_ps(plane + at[i]));
    if (kFolds) r[i] = _mm256_permutevar_ps(r[i], runs.order[i]);
  }
  __m256 v[4];
  TransposeHalves(r, v);
  for (int k = 0; k < 4; ++k) values[k] = reinterpret_cast<Vec<float>>(v[k]);
}

// Whether ReadRun reads taps [t, t + kRun) (t a multiple of kRun) in every
// lane: all inside and adjacent, or all outside. offset_of(t) gives tap t's
// offsets. Not so within a pixel or two of an edge, nor, for the cubic
// family, where border or reflection padding folds taps back.
template <int kRun, int kTaps, typename OffsetOf>
inline bool RunsAgree(const OffsetOf& offset_of) {
  Index<float> bad{};
  for (int t = 0; t < kTaps; t += kRun) {
    const Index<float> first = offset_of(t);
    const Index<float> inside = first >= 0;
    for (int k = 1; k < kRun; ++k) {
      const Index<float> offset = offset_of(t + k);
      bad |= (inside & (offset != first + k)) | (~inside & (offset >= 0));
    }
  }
  return !AnyLane<float>(bad);
}

// RunsAgree for taps in registers. With adjacent taps a run disagrees only
// where its x taps lie partly inside: a test of one mask instead of every
// offset (a tenth of the 1-channel forward's instructions).
template <typename T, typename Family, Padding kPad, int kRun, int kTaps, typename Lanes>
inline bool LaneRunsAgree(const Lanes& lanes) {
  if constexpr (Family::template kAdjacentTaps<kPad>) {
    return !AnyLane<T>(lanes.split_x);
  } else {
    return RunsAgree<kRun, kTaps>([&](int t) { return lanes.offset[t]; });
  }
}

// The x-run length ReadRun serves for a family of kTapsPerAxis taps per axis
// (0: none; nearest has one tap, double values no 8-lane float runs).
template <typename T, int kTapsPerAxis>
constexpr int kRunFor = std::is_same_v<T, float> && (kTapsPerAxis == 2 || kTapsPerAxis == 4) ? kTapsPerAxis : 0;

// ReadRun's scatter twin: adds update[k] (the taps of one run, k in x order)
// of each of ``count`` lanes to the kRun adjacent pixels from plane + at[i],
// one lane after the other, with one 8- or 16-byte read-modify-write per lane
// instead of kRun scalar ones. Each pixel thus receives its terms lane by
// lane, and within a lane in tap order: the order the backwards' scalar adds
// follow too (AddLaneByLane). Two threads, backward alone, one process
// switching between scalar adds and runs: 16 x 3 x 64^2 zeros 0.56 -> 0.48
// ms; 4 x 3 x 384^2 border 11.0 -> 9.0; 16 x 16 x 128^2 -> 32^2 reflection
// 2.64 -> 1.90; 32 x 1 x 28^2 0.23 -> 0.18.
template <int kRun>
inline void AddRun(float* plane, const int32_t* at, const Vec<float>* update, int count) {
  static_assert(kRun == 2 || kRun == 4);
  if constexpr (kRun == 2) {
    const __m256 u0 = reinterpret_cast<__m256>(update[0]);
    const __m256 u1 = reinterpret_cast<__m256>(update[1]);
    alignas(32) float pairs[16];
    _mm256_store_ps(pairs, _mm256_unpacklo_ps(u0, u1));      // lanes 0, 1 | 4, 5
    _mm256_store_ps(pairs + 8, _mm256_unpackhi_ps(u0, u1));  // lanes 2, 3 | 6, 7
    constexpr int kPairOf[8] = {0, 2, 8, 10, 4, 6, 12, 14};
    for (int i = 0; i < count; ++i) {
      double* pixels = reinterpret_cast<double*>(plane + at[i]);
      const __m128 pair = _mm_castpd_ps(_mm_load_sd(reinterpret_cast<const double*>(pairs + kPairOf[i])));
      _mm_store_sd(pixels, _mm_castps_pd(_mm_add_ps(_mm_castpd_ps(_mm_load_sd(pixels)), pair)));
    }
  } else {
    __m256 tap_major[4];
    __m256 point_major[4];  // point_major[i]: the run of lane i | of lane i + 4
    for (int k = 0; k < 4; ++k) tap_major[k] = reinterpret_cast<__m256>(update[k]);
    TransposeHalves(tap_major, point_major);
    alignas(32) float runs[32];
    for (int i = 0; i < 4; ++i) _mm256_store_ps(runs + 8 * i, point_major[i]);
    for (int i = 0; i < count; ++i) {
      float* pixels = plane + at[i];
      _mm_storeu_ps(pixels, _mm_add_ps(_mm_loadu_ps(pixels), _mm_load_ps(runs + 8 * (i % 4) + 4 * (i / 4))));
    }
  }
}

// AddRun's order with scalar adds, for taps that do not form runs: lane by
// lane, each lane's kStep taps in order. at[k][i] is tap k's pixel in lane i,
// added[k][i] its term.
template <typename T, int kStep, int kLanes>
inline void AddLaneByLane(T* plane, const int32_t (*at)[kLanes], const T (*added)[kLanes], int count) {
  for (int i = 0; i < count; ++i) {
    for (int k = 0; k < kStep; ++k) plane[at[k][i]] += added[k][i];
  }
}
#endif

template <typename T>
inline T ReadTap(const T* plane, int32_t offset) {
  return Masked(plane[Clamped(offset)], InsideBits<T>(offset));
}

template <typename T>
inline Vec<T> LoadVec(const T* p) {
  Vec<T> v;
  std::memcpy(&v, p, sizeof(v));
  return v;
}

// Writes the grid gradients of ``count`` points, (count, kNdim) x first, from
// total[axis][point] (axis 0 the outermost).
template <typename T, int kNdim, int kPoints>
inline void StoreGridGradient(const T (*total)[kPoints], int count, T* out) {
  int b = 0;
  if constexpr (kNdim == 2) {
    for (; b + Simd<T>::kLanes <= count; b += Simd<T>::kLanes) {
      StorePairs(out + 2 * b, LoadVec(&total[1][b]), LoadVec(&total[0][b]));
    }
  }
  for (; b < count; ++b) {
    for (int s = 0; s < kNdim; ++s) out[b * kNdim + (kNdim - 1 - s)] = total[s][b];
  }
}

// ---------------------------------------------------------------------------
// The passes over a block.
// ---------------------------------------------------------------------------

// Forward: out = sum over taps of weight * value. ``values`` and ``out``
// point at one sample; channels-first out is (C, P), channels-last (P, C).
template <typename Table, typename T = typename Table::Value>
void InterpolateBlock(const Table& block, const T* values, T* out, int64_t first, const Geometry& g) {
  constexpr int kTaps = Table::kTaps;
  const int n = block.count;
#ifdef JAXGRIDSAMPLE_AVX2
  // The taps per axis, from the tap count: 2 linear, 4 cubic.
  constexpr int kTapsPerAxis = kTaps == Power(2, Table::kNdim) ? 2 : kTaps == Power(4, Table::kNdim) ? 4 : 1;
  constexpr int kRun = kRunFor<T, kTapsPerAxis>;
  const bool runs_fit = g.num_pixels >= kRun;  // ReadRun's condition
#endif
  if (!g.channels_last) {
#ifdef JAXGRIDSAMPLE_AVX2
    // Bilinear 2-D: while a channel is swept, the next channel's plane is
    // asked into L2, a few lines per lane group, where the block reads most
    // of its lines (two rows per point, as many lines as rows or fewer). Its
    // random reads then hit L2 instead of waiting on L3, whose lines came in
    // a few at a time. 16 x 16 x 128^2 -> 32^2 reflection, two threads, back
    // to back: 0.43 -> 0.36 ms (PyTorch's kernel 0.48). Nearest, which reads
    // one row, ran slower so (16 x 16 x 128^2 -> 32^2: 0.26 -> 0.33 ms).
    const int64_t plane_lines = g.num_pixels * int64_t{sizeof(T)} / 64;
    const bool prefetch = kTaps == 4 && Table::kNdim == 2 && plane_lines <= 2 * int64_t{n};
    // What every channel does alike for a lane group, found once per block
    // rather than once per channel: whether its taps run, where each run
    // starts (run_read, read as scalars: extracting them from a vector took
    // two instructions each, one on the shuffle port that the runs' shuffles
    // need), and the lines it prefetches, [first_line[j], first_line[j + 1])
    // for group j. Per channel, the test of every offset and two integer
    // divisions per group had been a third of the work: one thread, 4 x 48 x
    // 64^2 1.02-1.23 -> 0.74 ms (PyTorch's kernel 1.03); two threads, 8 x 32
    // x 96^2 1.72-1.91 -> 1.37-1.42 ms.
    constexpr int kGroups = Table::kPoints / Table::kLanes;
    constexpr int kRunRows = kRun > 0 ? kTaps / kRun : 1;
    bool runs[kGroups];
    int32_t first_line[kGroups + 1];
    alignas(32) uint32_t run_read[kRunRows][kRun > 0 ? Table::kPoints : 1];
    const int groups = n / Table::kLanes;
    for (int j = 0; j < groups; ++j) {
      const int b = j * Table::kLanes;
      runs[j] = false;
      if constexpr (kRun > 0) {
        const auto offset_of = [&](int t) {
          Index<T> offset;
          std::memcpy(&offset, &block.offset[t][b], sizeof(offset));
          return offset;
        };
        runs[j] = runs_fit && RunsAgree<kRun, kTaps>(offset_of);
        if (runs[j]) {
          for (int r = 0; r < kRunRows; ++r) {
            const Index<T> offset = offset_of(r * kRun);
            Store(reinterpret_cast<int32_t*>(&run_read[r][b]), offset & (offset >= 0));
          }
        }
      }
    }
    if (prefetch) {
      for (int j = 0; j <= groups; ++j) first_line[j] = static_cast<int32_t>(plane_lines * (j * Table::kLanes) / n);
    }
#endif
    for (int64_t c = 0; c < g.channels; ++c) {
      const T* plane = values + c * g.num_pixels;
      T* row = out + c * g.num_points + first;
      int b = 0;
#ifdef JAXGRIDSAMPLE_AVX2
      const char* next_plane = c + 1 < g.channels && prefetch ? reinterpret_cast<const char*>(plane + g.num_pixels)
                                                              : nullptr;
      for (; b + Table::kLanes <= n; b += Table::kLanes) {
        const int j = b / Table::kLanes;
        if (next_plane != nullptr) {
          for (int32_t line = first_line[j]; line < first_line[j + 1]; ++line) {
            __builtin_prefetch(next_plane + int64_t{line} * 64, 0, 2);
          }
        }
        Vec<T> sum{};
        if constexpr (kRun > 0) {
          const auto offset_of = [&](int t) {
            Index<T> offset;
            std::memcpy(&offset, &block.offset[t][b], sizeof(offset));
            return offset;
          };
          if (runs[j]) {
            for (int t = 0; t < kTaps; t += kRun) {
              Vec<T> tap[kRun];
              ReadRunAt<kRun>(plane, &run_read[t / kRun][b], offset_of(t) >= 0, tap);
              for (int k = 0; k < kRun; ++k) sum += LoadVec(&block.weight[t + k][b]) * tap[k];
            }
            Store(row + b, sum);
            continue;
          }
        }
        for (int t = 0; t < kTaps; ++t) sum += LoadVec(&block.weight[t][b]) * GatherVec(plane, &block.offset[t][b]);
        Store(row + b, sum);
      }
#endif
      for (; b < n; ++b) {
        T sum = T(0);
        for (int t = 0; t < kTaps; ++t) sum += block.weight[t][b] * ReadTap(plane, block.offset[t][b]);
        row[b] = sum;
      }
    }
    return;
  }
  const int64_t channels = g.channels;
  for (int b = 0; b < n; ++b) {
    T* row = out + (first + b) * channels;
    std::fill(row, row + channels, T(0));
    for (int t = 0; t < kTaps; ++t) {
      const int32_t offset = block.offset[t][b];
      const T w = block.weight[t][b];
      const MaskBits<T> mask = InsideBits<T>(offset);
      const T* pixel = values + int64_t{Clamped(offset)} * channels;
      for (int64_t c = 0; c < channels; ++c) row[c] += w * Masked(pixel[c], mask);
    }
  }
}

// The backward over a block, for channels [c_begin, c_end):
// * grad_input: scatter-adds weight * grad_out to every tap. An outside tap
//   adds +0 to the pixel its clamped offset borrows (ATen skips it: a NaN or
//   inf incoming gradient must not reach that pixel).
// * grad_grid (with_grid): adds, per spatial axis, grad_out times the spatial
//   derivative (ATen's gx, gy, gz: the taps' values times their slopes) to
//   total[axis][point].
template <typename Table, typename T = typename Table::Value>
void BackwardBlock(const Table& block, const T* values, const T* grad_out, T* grad_values, int64_t first,
                   const Geometry& g, int64_t c_begin, int64_t c_end, bool with_grid,
                   T (*total)[Table::kPoints]) {
  constexpr int kTaps = Table::kTaps;
  constexpr int kNdim = Table::kNdim;
  constexpr int kLanes = Table::kLanes;
  const int n = block.count;
  if (!g.channels_last) {
    for (int64_t c = c_begin; c < c_end; ++c) {
      const T* plane = values + c * g.num_pixels;
      T* grad_plane = grad_values + c * g.num_pixels;
      const T* row = grad_out + c * g.num_points + first;
      int b = 0;
#ifdef JAXGRIDSAMPLE_AVX2
      constexpr int kTapsPerAxis = kTaps == Power(2, kNdim) ? 2 : kTaps == Power(4, kNdim) ? 4 : 1;
      constexpr int kStep = std::max(1, kRunFor<T, kTapsPerAxis>);  // BackwardDirect's runs
      for (; b + kLanes <= n; b += kLanes) {
        const Vec<T> incoming = LoadVec(row + b);
        Vec<T> derivative[kNdim] = {};
        for (int t0 = 0; t0 < kTaps; t0 += kStep) {
          alignas(32) T update[kStep][kLanes];
          for (int t = t0; t < t0 + kStep; ++t) {
            if (with_grid) {
              const Vec<T> value = GatherVec(plane, &block.offset[t][b]);
              for (int s = 0; s < kNdim; ++s) derivative[s] += LoadVec(&block.slope[s][t][b]) * value;
            }
            Store(update[t - t0], LoadVec(&block.weight[t][b]) * incoming);
          }
          // Lane by lane, as BackwardDirect adds (AddRun).
          for (int i = 0; i < kLanes; ++i) {
            for (int t = t0; t < t0 + kStep; ++t) {
              const int32_t offset = block.offset[t][b + i];
              grad_plane[Clamped(offset)] += Masked(update[t - t0][i], InsideBits<T>(offset));
            }
          }
        }
        if (with_grid) {
          for (int s = 0; s < kNdim; ++s) Store(&total[s][b], LoadVec(&total[s][b]) + derivative[s] * incoming);
        }
      }
#endif
      for (; b < n; ++b) {
        const T incoming = row[b];
        T derivative[kNdim] = {};
        for (int t = 0; t < kTaps; ++t) {
          const int32_t offset = block.offset[t][b];
          if (with_grid) {
            const T value = ReadTap(plane, offset);
            for (int s = 0; s < kNdim; ++s) derivative[s] += block.slope[s][t][b] * value;
          }
          grad_plane[Clamped(offset)] += Masked(block.weight[t][b] * incoming, InsideBits<T>(offset));
        }
        if (with_grid) {
          for (int s = 0; s < kNdim; ++s) total[s][b] += derivative[s] * incoming;
        }
      }
    }
    return;
  }
  const int64_t channels = g.channels;
  for (int b = 0; b < n; ++b) {
    const T* row = grad_out + (first + b) * channels;
    for (int t = 0; t < kTaps; ++t) {
      const int32_t offset = block.offset[t][b];
      const T w = block.weight[t][b];
      const MaskBits<T> mask = InsideBits<T>(offset);
      const T* pixel = values + int64_t{Clamped(offset)} * channels;
      T* grad_pixel = grad_values + int64_t{Clamped(offset)} * channels;
      // The tap's value contracted with the incoming gradient over channels.
      T response = T(0);
      for (int64_t c = c_begin; c < c_end; ++c) {
        grad_pixel[c] += Masked(w * row[c], mask);
        response += Masked(pixel[c], mask) * row[c];
      }
      if (with_grid) {
        for (int s = 0; s < kNdim; ++s) total[s][b] += block.slope[s][t][b] * response;
      }
    }
  }
}

// grad_grid: per spatial axis, the sum over channels of grad_out times the
// spatial derivative (ATen's gx, gy, gz: the taps' values times their slopes).
// Writes (count, kNdim) values, x first.
template <typename Table, typename T = typename Table::Value>
void GradGridBlock(const Table& block, const T* values, const T* grad_out, T* grad_grid, int64_t first,
                   const Geometry& g) {
  constexpr int kTaps = Table::kTaps;
  constexpr int kNdim = Table::kNdim;
  const int n = block.count;
  alignas(32) T total[kNdim][Table::kPoints];
  for (int s = 0; s < kNdim; ++s) std::fill(total[s], total[s] + n, T(0));
  if (!g.channels_last) {
    for (int64_t c = 0; c < g.channels; ++c) {
      const T* plane = values + c * g.num_pixels;
      const T* row = grad_out + c * g.num_points + first;
      int b = 0;
#ifdef JAXGRIDSAMPLE_AVX2
      for (; b + Table::kLanes <= n; b += Table::kLanes) {
        Vec<T> derivative[kNdim] = {};
        for (int t = 0; t < kTaps; ++t) {
          const Vec<T> value = GatherVec(plane, &block.offset[t][b]);
          for (int s = 0; s < kNdim; ++s) derivative[s] += LoadVec(&block.slope[s][t][b]) * value;
        }
        const Vec<T> incoming = LoadVec(row + b);
        for (int s = 0; s < kNdim; ++s) Store(&total[s][b], LoadVec(&total[s][b]) + derivative[s] * incoming);
      }
#endif
      for (; b < n; ++b) {
        T derivative[kNdim] = {};
        for (int t = 0; t < kTaps; ++t) {
          const T value = ReadTap(plane, block.offset[t][b]);
          for (int s = 0; s < kNdim; ++s) derivative[s] += block.slope[s][t][b] * value;
        }
        for (int s = 0; s < kNdim; ++s) total[s][b] += derivative[s] * row[b];
      }
    }
  } else {
    const int64_t channels = g.channels;
    for (int b = 0; b < n; ++b) {
      const T* row = grad_out + (first + b) * channels;
      for (int t = 0; t < kTaps; ++t) {
        const int32_t offset = block.offset[t][b];
        const MaskBits<T> mask = InsideBits<T>(offset);
        const T* pixel = values + int64_t{Clamped(offset)} * channels;
        // The tap's value contracted with the incoming gradient over channels.
        T response = T(0);
        for (int64_t c = 0; c < channels; ++c) response += Masked(pixel[c], mask) * row[c];
        for (int s = 0; s < kNdim; ++s) total[s][b] += block.slope[s][t][b] * response;
      }
    }
  }
  StoreGridGradient<T, kNdim, Table::kPoints>(total, n, grad_grid + first * kNdim);
}

// ---------------------------------------------------------------------------
// Work split over XLA's intra-op thread pool.
// ---------------------------------------------------------------------------

// Helper threads of our own, not XLA's pool. Three things about how Linux
// schedules them decide whether they help:
//
//   * A woken thread may be placed on the waker's core, beside the caller,
//     with the other core idle (the scheduler took milliseconds to spread
//     them). A worker that finds itself there moves off (AvoidCpu). A
//     polling worker can also sit queued on the caller's core; the caller
//     moves it (PushOffCpu).
//   * Another library's threads may be spinning on the other core: OpenMP
//     runtimes (PyTorch's among them) spin for milliseconds after each
//     parallel region. A woken worker with the default time slice waited
//     behind such a spinner until the spinner's slice ended, longer than a
//     whole call, and the caller did all the work alone. Workers ask for the
//     shortest slice the kernel grants (RequestShortTimeSlice), which lets a
//     waking worker preempt a thread that has run a full slice. (2 cores,
//     4 x 1 x 128^2 reflection right after a PyTorch call: the worker took
//     none of the 8 units before, 189 us, one core's time; 4 of 8 with the
//     short slice, about 115 us.)
//   * Waking a sleeping worker is slow on a virtual machine: on the Intel
//     VM, the caller's futex wake took 25 us and the worker started 22 us
//     after that, on a 0.3 ms call. So a worker polls for the next job for
//     kSpinMicroseconds after each one before it sleeps, and the caller wakes
//     only sleepers. Calls in a row then skip both (4 x 1 x 256^2 bilinear,
//     back to back: 0.35 -> 0.26 ms; PyTorch's kernel 0.21). The poll does
//     not yield: a spinner that yields is charged a full slice each time, and
//     then loses the core to any other runnable thread when a call comes. It
//     is short, and its slice is the shortest there is, so it holds another
//     thread's core for a tenth of a millisecond at most (OpenMP runtimes
//     spin for milliseconds).
//
// Calls too small to gain from a second thread (the wake-up costs several
// microseconds) run on the caller alone (kMinParallelWork), and so do small
// calls that would have to wake a sleeping worker (kColdMinWork).

inline void CpuRelax() {
#if defined(__x86_64__) || defined(__i386__)
  __builtin_ia32_pause();
#endif
}

inline int CurrentCpu() {
#ifdef __linux__
  return sched_getcpu();
#else
  return -1;
#endif
}

// While it lives, keeps the calling thread off ``cpu`` if it is running there
// (and may run elsewhere). Moving off costs two syscalls.
class AvoidCpu {
 public:
  explicit AvoidCpu(int cpu) {
#ifdef __linux__
    if (cpu < 0 || sched_getcpu() != cpu) return;
    if (pthread_getaffinity_np(pthread_self(), sizeof(original_), &original_) != 0) return;
    if (!CPU_ISSET(cpu, &original_) || CPU_COUNT(&original_) < 2) return;
    cpu_set_t elsewhere = original_;
    CPU_CLR(cpu, &elsewhere);
    moved_ = pthread_setaffinity_np(pthread_self(), sizeof(elsewhere), &elsewhere) == 0;
#endif
  }
  ~AvoidCpu() {
#ifdef __linux__
    if (moved_) pthread_setaffinity_np(pthread_self(), sizeof(original_), &original_);
#endif
  }
  AvoidCpu(const AvoidCpu&) = delete;
  AvoidCpu& operator=(const AvoidCpu&) = delete;

 private:
#ifdef __linux__
  cpu_set_t original_;
#endif
  bool moved_ = false;
};

// Asks Linux (6.12 and newer, EEVDF) for a 0.1 ms time slice for the calling
// thread, keeping its policy and nice value. A thread with a shorter slice
// than the running one may preempt it when it wakes. Older kernels ignore
// the request; any failure leaves the default.
inline void RequestShortTimeSlice() {
#if defined(__linux__) && defined(SYS_sched_setattr)
  if (sched_getscheduler(0) != SCHED_OTHER) return;
  errno = 0;
  const int nice = getpriority(PRIO_PROCESS, 0);  // this thread's, on Linux
  if (errno != 0) return;
  struct {  // struct sched_attr of <linux/sched/types.h>, version 1
    uint32_t size, policy;
    uint64_t flags;
    int32_t nice;
    uint32_t priority;
    uint64_t runtime, deadline, period;
    uint32_t util_min, util_max;
  } attr = {};
  attr.size = sizeof(attr);
  attr.policy = SCHED_OTHER;
  attr.nice = nice;
  attr.runtime = 100'000;  // nanoseconds: the smallest slice Linux accepts
  syscall(SYS_sched_setattr, 0, &attr, 0);
#endif
}

// How long a worker polls for the next job before it sleeps (see above): a
// little longer than a Python loop takes between two calls. 20, 50, 100 and
// 300 us, back to back, 4 x 1 x 256^2: 0.31, 0.28, 0.26, 0.30 ms.
//
// Counted from the end of the call, not from the worker's last unit: a
// worker that finished its units while the caller still ran its last one
// (0.1 ms and more) had often fallen asleep by the next call, which then
// woke it again (the VM's wake cost the caller up to 0.09 ms, and the worker
// came late). While a call runs a worker polls for at most
// kMaxCallPollMicroseconds, in case the caller is preempted.
constexpr int64_t kSpinMicroseconds = 100;
constexpr int64_t kMaxCallPollMicroseconds = 2000;

// Below this much work (points times taps and channels, see WorkOf) a call
// runs on the caller alone: about 30 microseconds on one core.
constexpr int64_t kMinParallelWork = int64_t{1} << 17;

// Below this much work (about 60 microseconds on one core) a call also runs
// alone when every worker sleeps and no call has ended within
// kRecentMicroseconds: an isolated small call, say one between a model's
// other operations. Waking a sleeping worker costs the caller the futex
// wake, and the worker starts later still: on the Intel VM 15-55 us for the
// wake and 7-42 us more (medians of 200 wakes, after pauses of 0.3 to 20
// ms), more than such a call can gain. Calls closer together are a loop (a
// plain Python loop of jitted calls left 8-62 us between one call's end and
// the next one's start here, 10th to 90th percentile), where woken workers
// are still polling when the next call comes. Two threads, one process,
// alternating calls with and without the rule: with 0.5 ms between calls,
// 32 x 1 x 28^2 bilinear forward 65 -> 47 us and 16 x 8 x 32^2 nearest
// 181 -> 72 us; with 2 ms, 150 -> 47 and 184 -> 75; back to back and with
// 0.2 ms, level (31, 39; 57-62, 94-99 us).
constexpr int64_t kColdMinWork = int64_t{1} << 18;
constexpr int64_t kRecentMicroseconds = 300;

// A worker whose current unit has taken this many times the caller's mean
// unit time, plus kOverdueMicroseconds, is taken to be preempted
// (WaitForWorkers). Without a mean (the caller ran no unit),
// kOverdueMicroseconds alone.
constexpr int64_t kOverdueFactor = 2;
constexpr int64_t kOverdueMicroseconds = 20;

// A worker that polls on the caller's core is moved off it (PushOffCpu) in
// calls whose units are smaller than this much work: about 8 microseconds
// each on one core.
constexpr int64_t kMaxPushUnitWork = kMinParallelWork / 4;

inline int64_t NowNanoseconds() {
  return std::chrono::duration_cast<std::chrono::nanoseconds>(std::chrono::steady_clock::now().time_since_epoch())
      .count();
}

class Workers {
 public:
  // The process's workers, created on first use; never destroyed (detached
  // threads may outlive static destructors). A forked child gets new ones.
  static Workers& Get() {
    static std::once_flag registered;
    std::call_once(registered, [] { pthread_atfork(nullptr, nullptr, [] { instance_ = nullptr; }); });
    Workers* workers = instance_.load();
    if (workers == nullptr) {
      Workers* fresh = new Workers;
      if (instance_.compare_exchange_strong(workers, fresh)) return *fresh;
      delete fresh;
    }
    return *workers;
  }

  // Runs fn(unit) for unit in [0, num_units) on the calling thread and on at
  // most threads - 1 workers. Each of them owns a contiguous range of units
  // (the caller the first), runs it front to back, and then takes units one
  // at a time from the back of the range with the most left (Job::Work). So
  // the caller finishes alone if no worker joins in time; it then waits only
  // for workers that joined. A concurrent call (another thread of the
  // program) finds the workers taken and runs alone: never a deadlock, never
  // a wait.
  //
  // ``work`` (see WorkOf) decides whether an isolated call wakes sleeping
  // workers (kColdMinWork).
  template <typename Fn>
  void Run(int64_t threads, int64_t num_units, int64_t work, const Fn& fn) {
    const int64_t helpers = std::min<int64_t>(threads, num_units) - 1;
    std::unique_lock<std::mutex> submit(submit_, std::try_to_lock);
    if (helpers <= 0 || num_units > kMaxSharedUnits || !submit.owns_lock() || (work < kColdMinWork && Isolated()) ||
        Grow(helpers) == 0) {
      for (int64_t unit = 0; unit < num_units; ++unit) fn(unit);
      last_end_.store(NowNanoseconds(), std::memory_order_relaxed);
      return;
    }
    Job job(&Job::Call<Fn>, &fn, num_units, std::min<int64_t>(helpers, static_cast<int64_t>(threads_.size())),
            CurrentCpu());
    job_.store(&job);
    bool sleeping;
    {
      std::lock_guard<std::mutex> lock(sleep_mutex_);
      generation_.fetch_add(1);
      sleeping = sleepers_ > 0;
    }
    if (sleeping) wake_.notify_all();
    if (work < num_units * kMaxPushUnitWork) PushOffCpu(job.caller_cpu);
    const int64_t start = NowNanoseconds();
    const int64_t units = job.Work(0, nullptr);
    // Workers that load the job after this see none; those that joined are
    // counted, and the caller waits for their last units.
    job_.store(nullptr);
    WaitForWorkers(units > 0 ? (NowNanoseconds() - start) / units : 0);
    last_end_.store(NowNanoseconds(), std::memory_order_relaxed);
  }

 private:
  // Whether every started worker sleeps and no call has ended within
  // kRecentMicroseconds (the caller holds submit_).
  bool Isolated() {
    if (NowNanoseconds() - last_end_.load(std::memory_order_relaxed) < kRecentMicroseconds * 1000) return false;
    std::lock_guard<std::mutex> lock(sleep_mutex_);
    return !threads_.empty() && sleepers_ == static_cast<int>(threads_.size());
  }

  // Job::Range packs a range's two bounds into 32 bits each.
  static constexpr int64_t kMaxSharedUnits = std::numeric_limits<int32_t>::max();

  // A call's units, dealt out as one contiguous range per thread that may
  // take part: the caller's first, then one per helper. A thread that owns a
  // range runs it from the front; once it is empty, it takes units from the
  // back of the fullest range left. Contiguous ranges keep a thread on its
  // own samples, whose copies (the interleaved and pixel-major forwards) it
  // then makes once; taking from the back lets a thread that runs at full
  // speed finish the units of one that shares its core with another
  // program's thread (an OpenMP runtime's, spinning for milliseconds after
  // each of its calls), and the units of a helper that joins late or never.
  struct Job {
    // A range's front (high 32 bits) and end, changed together.
    struct alignas(64) Range {
      std::atomic<uint64_t> bounds{0};
    };

    Job(void (*call_fn)(const void*, int64_t), const void* fn_ptr, int64_t units, int64_t helper_count, int cpu)
        : call(call_fn), fn(fn_ptr), helpers(helper_count), caller_cpu(cpu),
          ranges(static_cast<size_t>(helper_count + 1)) {
      const int64_t count = helper_count + 1;
      for (int64_t r = 0; r < count; ++r) {
        ranges[r].bounds.store(Pack(units * r / count, units * (r + 1) / count), std::memory_order_relaxed);
      }
    }

    void (*call)(const void* fn, int64_t unit);
    const void* fn;
    int64_t helpers;  // workers 0 .. helpers - 1 may join
    int caller_cpu;   // -1 if unknown
    std::vector<Range> ranges;

    template <typename Fn>
    static void Call(const void* fn, int64_t unit) {
      (*static_cast<const Fn*>(fn))(unit);
    }

    // Runs units, its own range's first (owner 0 is the caller, owner i + 1
    // worker i), until none is left; the number run. A worker passes where
    // it says when each unit started.
    int64_t Work(int64_t owner, std::atomic<int64_t>* unit_start) {
      int64_t count = 0;
      for (int64_t unit = Take(owner, true); unit >= 0 || (unit = Steal()) >= 0; unit = Take(owner, true), ++count) {
        if (unit_start != nullptr) unit_start->store(NowNanoseconds(), std::memory_order_relaxed);
        call(fn, unit);
      }
      return count;
    }

   private:
    static uint64_t Pack(int64_t front, int64_t end) {
      return (static_cast<uint64_t>(front) << 32) | static_cast<uint64_t>(end);
    }

    // The front unit of range r (or its last one), or -1 if it is empty.
    int64_t Take(int64_t r, bool front) {
      uint64_t bounds = ranges[r].bounds.load();
      for (;;) {
        const int64_t first = static_cast<int64_t>(bounds >> 32);
        const int64_t end = static_cast<int64_t>(bounds & 0xffffffffu);
        if (first >= end) return -1;
        const uint64_t taken = front ? Pack(first + 1, end) : Pack(first, end - 1);
        if (ranges[r].bounds.compare_exchange_weak(bounds, taken)) return front ? first : end - 1;
      }
    }

    // The last unit of the range with the most left, or -1 if all are empty.
    int64_t Steal() {
      for (;;) {
        int64_t fullest = -1;
        int64_t most = 0;
        for (size_t r = 0; r < ranges.size(); ++r) {
          const uint64_t bounds = ranges[r].bounds.load(std::memory_order_relaxed);
          const int64_t left = static_cast<int64_t>(bounds & 0xffffffffu) - static_cast<int64_t>(bounds >> 32);
          if (left > most) {
            most = left;
            fullest = static_cast<int64_t>(r);
          }
        }
        if (fullest < 0) return -1;
        const int64_t unit = Take(fullest, false);
        if (unit >= 0) return unit;
      }
    }
  };

  // What the caller knows of one worker, for WaitForWorkers.
  struct Slot {
    std::atomic<long> tid{0};       // the worker's thread id, once it runs
    std::atomic<bool> busy{false};  // inside a job's units
    std::atomic<bool> pulled{false};  // its affinity was narrowed by a caller
    std::atomic<int64_t> unit_start{0};  // when its current unit started (NowNanoseconds)
    std::atomic<int> polling_cpu{-1};    // the core it polls on; -1 while it sleeps or works
#ifdef __linux__
    cpu_set_t initial;  // its affinity before any pull
#endif
  };

  // Moves the workers that poll on ``cpu`` (the caller's) to the other
  // cores. Such a worker waits in the queue behind the caller, and Linux can
  // leave it there for the whole call while the other core idles: it then
  // takes no unit. (Seen in some processes and not others: a small forward
  // right after a forward+backward found the worker on its core in every
  // call; 32 x 1 x 28^2 took 47-49 us against 28 where it did not, and 30-33
  // with the move.) The worker gets its affinity back when it joins
  // (Release). Only for calls of small units (kMaxPushUnitWork): on a core
  // that another program's thread shares, a moved worker runs its unit at
  // half speed, and a large straggling unit costs more than the move gains.
  void PushOffCpu(int cpu) {
#ifdef __linux__
    if (cpu < 0) return;
    for (const auto& slot : slots_) {
      const long tid = slot->tid.load();
      if (tid == 0 || slot->polling_cpu.load(std::memory_order_relaxed) != cpu) continue;
      if (!CPU_ISSET(cpu, &slot->initial) || CPU_COUNT(&slot->initial) < 2) continue;
      cpu_set_t elsewhere = slot->initial;
      CPU_CLR(cpu, &elsewhere);
      slot->pulled.store(true);  // before the change, so the worker undoes it
      sched_setaffinity(static_cast<pid_t>(tid), sizeof(elsewhere), &elsewhere);
    }
#else
    (void)cpu;
#endif
  }

  // Returns once no worker is inside the job. A worker in its last unit is
  // usually about to finish, and the caller spins. But a worker can also be
  // preempted on its core, by another program's thread (an OpenMP runtime's,
  // say, which spins for milliseconds after each of its calls), and then
  // waits out that thread's time slice while the caller spins on a core that
  // Linux does not hand over. So a worker whose unit is overdue (twice the
  // caller's mean unit time, and a little) is pulled onto the caller's core,
  // and the caller sleeps until the workers are done. The units of a call
  // are of a size, so a unit that takes twice as long has mostly waited.
  void WaitForWorkers(int64_t mean_unit_nanoseconds) {
    const int64_t overdue = kOverdueFactor * mean_unit_nanoseconds + kOverdueMicroseconds * 1000;
#ifdef __linux__
    const int cpu = sched_getcpu();
    for (int spin = 0; joined_.load() != 0; ++spin) {
      CpuRelax();
      if (spin % 64 != 63 || cpu < 0) continue;
      const int64_t now = NowNanoseconds();
      bool pulled = false;
      for (const auto& slot : slots_) {
        const long tid = slot->tid.load();
        if (tid == 0 || !slot->busy.load() || now - slot->unit_start.load(std::memory_order_relaxed) < overdue) {
          continue;
        }
        cpu_set_t here;
        CPU_ZERO(&here);
        CPU_SET(cpu, &here);
        slot->pulled.store(true);  // before the change, so the worker undoes it
        sched_setaffinity(static_cast<pid_t>(tid), sizeof(here), &here);
        pulled = true;
      }
      if (!pulled) continue;
      std::unique_lock<std::mutex> lock(done_mutex_);
      caller_waiting_.store(true);
      done_.wait(lock, [&] { return joined_.load() == 0; });
      caller_waiting_.store(false);
      return;
    }
#else
    (void)overdue;
    while (joined_.load() != 0) CpuRelax();
#endif
  }

  // Gives a worker back the affinity it had, if a caller pulled it.
  static void Release(Slot* slot) {
#ifdef __linux__
    if (slot->pulled.exchange(false)) pthread_setaffinity_np(pthread_self(), sizeof(slot->initial), &slot->initial);
#endif
  }

  // Starts workers up to ``count``; the number running.
  size_t Grow(int64_t count) {
    while (static_cast<int64_t>(threads_.size()) < count) {
      const int index = static_cast<int>(threads_.size());
      slots_.push_back(std::make_unique<Slot>());
      try {
        std::thread(&Workers::Loop, this, index, slots_.back().get()).detach();
      } catch (...) {
        slots_.pop_back();
        break;  // no more threads: run with those there are
      }
      threads_.push_back(index);
    }
    return threads_.size();
  }

  void Loop(int index, Slot* slot) {
#ifdef __linux__
    pthread_setname_np(pthread_self(), "jaxgridsample");
    if (pthread_getaffinity_np(pthread_self(), sizeof(slot->initial), &slot->initial) == 0) {
      slot->tid.store(static_cast<long>(syscall(SYS_gettid)));
    }
#endif
    RequestShortTimeSlice();
    uint64_t seen = generation_.load();
    for (;;) {
      const int64_t poll_start = NowNanoseconds();
      for (int spin = 0; generation_.load() == seen; ++spin) {
        CpuRelax();
        if (spin % 32 != 31) continue;
        slot->polling_cpu.store(CurrentCpu(), std::memory_order_relaxed);
        const int64_t now = NowNanoseconds();
        if (job_.load() != nullptr && now - poll_start < kMaxCallPollMicroseconds * 1000) continue;  // call running
        const int64_t call_end = std::max(poll_start, last_end_.load(std::memory_order_relaxed));
        if (now - call_end > kSpinMicroseconds * 1000) break;
      }
      slot->polling_cpu.store(-1, std::memory_order_relaxed);
      {
        std::unique_lock<std::mutex> lock(sleep_mutex_);
        ++sleepers_;
        wake_.wait(lock, [&] { return generation_.load() != seen; });
        --sleepers_;
        seen = generation_.load();
      }
      joined_.fetch_add(1);
      if (Job* job = job_.load(); job != nullptr && index < job->helpers) {
        slot->unit_start.store(NowNanoseconds(), std::memory_order_relaxed);  // not overdue before its first unit
        slot->busy.store(true);
        Release(slot);  // a pull that came after the last job ended
        {
          AvoidCpu avoid(job->caller_cpu);
          job->Work(index + 1, &slot->unit_start);
        }
        slot->busy.store(false);
      }
      Release(slot);  // also a push (PushOffCpu) that came too late for the job
      // Sequentially consistent, like the caller's store of caller_waiting_
      // and its test of joined_: either the caller sees no worker inside, or
      // the last worker out sees the caller waiting and wakes it.
      if (joined_.fetch_sub(1) == 1 && caller_waiting_.load()) {
        { std::lock_guard<std::mutex> lock(done_mutex_); }
        done_.notify_all();
      }
    }
  }

  static inline std::atomic<Workers*> instance_{nullptr};
  std::mutex submit_;          // held by the one call using the workers
  std::vector<int> threads_;   // indices of the started workers
  std::atomic<Job*> job_{nullptr};
  std::atomic<uint64_t> generation_{0};  // one more per job
  std::atomic<int> joined_{0};           // workers inside a job
  std::mutex sleep_mutex_;               // guards the generation's changes and sleepers_, for wake_
  int sleepers_ = 0;                     // workers waiting on wake_
  std::condition_variable wake_;
  std::vector<std::unique_ptr<Slot>> slots_;  // one per started worker; grown under submit_
  std::atomic<bool> caller_waiting_{false};   // the caller sleeps in WaitForWorkers
  std::atomic<int64_t> last_end_{0};          // when the last call ended (NowNanoseconds)
  std::mutex done_mutex_;
  std::condition_variable done_;
};

// The calling thread's tap table of this type, kept from call to call.
// Allocated per unit of work, the tables (128 KiB and more) went back to the
// system when freed and were page-faulted afresh by the next unit.
template <typename Table>
Table& ThreadTable() {
  thread_local std::unique_ptr<Table> table(new Table);
  return *table;
}

// A call's work in the units of kMinParallelWork: a few per point, and one per
// tap and channel.
inline int64_t WorkOf(const Geometry& g, int taps) {
  return g.num_batch * g.num_points * (4 + taps * std::max<int64_t>(1, g.channels));
}

// Runs fn(unit) for unit in [0, num_units): on as many threads as XLA's pool
// has, or on the caller alone if ``work`` is too little to share (or, in an
// isolated call, to repay waking a worker; see kColdMinWork).
template <typename Fn>
void ParallelFor(ffi::ThreadPool& pool, int64_t num_units, int64_t work, const Fn& fn) {
  Workers::Get().Run(work < kMinParallelWork ? 1 : pool.num_threads(), num_units, work, fn);
}

// Points per unit of work: whole blocks, about four units per thread.
inline int64_t PointsPerUnit(const Geometry& g, int64_t threads, int block_points) {
  const int64_t target_units = std::max<int64_t>(1, 4 * threads);
  const int64_t total = std::max<int64_t>(1, g.num_batch * g.num_points);
  const int64_t points = std::max<int64_t>(block_points, (total + target_units - 1) / target_units);
  return (points + block_points - 1) / block_points * block_points;
}

// Where the float32 AVX2 build reads a pixel-major copy of each sample (see
// the pixel-major forward below). Defined in every build, since the
// backward's channel groups (ChannelGroups) depend on it.
template <typename Family>
constexpr int64_t kPixelMajorMinChannels = Family::kTaps == 1 ? 3 : Family::kTaps == 4 ? 4 : 5;
constexpr int64_t kPixelMajorMaxFloats = int64_t{1} << 22;  // a scratch of at most 16 MiB per thread

inline int64_t PixelMajorStride(int64_t channels) { return (channels + 7) / 8 * 8; }

// Twice the points of the pixels or more: each pixel's channels are read
// often enough for a pixel-major copy to pay wherever it applies.
inline bool Upsampling(const Geometry& g) { return g.num_points >= 2 * g.num_pixels; }

template <typename Family>
inline bool PixelMajorForward(const Geometry& g) {
  return !g.channels_last && g.channels >= kPixelMajorMinChannels<Family> &&
         (g.num_pixels + 1) * PixelMajorStride(g.channels) <= kPixelMajorMaxFloats && 4 * g.num_points >= g.num_pixels;
}

#ifdef JAXGRIDSAMPLE_AVX2
// The processor, for the choices below that depend on it. They were first
// measured on an AMD Zen 4 (1 MiB of L2 per core), where the planes of the
// issue's workloads spill to L3. On an Intel Xeon with AVX-512 and AMX
// (2 MiB of L2 per core; the VM hides the model) several came out the other
// way: reading planes that fit in L2 was as fast as reading a pixel-major
// copy, whose cost was then left over; the table beat the direct pass for
// many channels; gathers beat runs of loads for one channel. The Intel rules
// below are those measurements. On an AMD Zen 5 (2 MiB of L2 per core, too)
// the Intel rules made bicubic's and nearest's forwards twice as slow and
// the rest level, so the rules key on the vendor, not on the L2 size.
struct Processor {
  bool intel = false;
  int64_t l2_bytes = int64_t{1} << 20;  // per core; 1 MiB where unknown
};

inline const Processor& ThisProcessor() {
  static const Processor processor = [] {
    Processor p;
#if defined(__x86_64__) || defined(__i386__)
    __builtin_cpu_init();
    p.intel = __builtin_cpu_is("intel");
#endif
#if defined(__linux__) && defined(_SC_LEVEL2_CACHE_SIZE)
    const long l2 = sysconf(_SC_LEVEL2_CACHE_SIZE);
    if (l2 > 0) p.l2_bytes = l2;
#endif
    return p;
  }();
  return processor;
}

// The direct passes (channels-first): each kLanes points' taps stay in
// registers while every channel is read, as in ATen, instead of going
// through a table of taps that each channel sweeps. Measured against the
// table (float32 and float64, 1 to 256 channels, 2-D and 3-D): the forward
// is faster, or level, for every family but nearest, where the table wins
// from 8 channels on; the backward is faster for up to 4 channels and from 8
// taps on (bicubic, trilinear), and for bilinear with many channels while a
// sample's planes fit in about 1 MiB of cache; beyond that the table's
// grid-gradient sweep, which keeps one plane in cache, wins (NeRF triplane,
// 32 x 256^2 per sample: 1.3x slower direct). Bilinear forward+backward,
// direct against the table (alternating runs, while the machine was busy;
// medians of three): 64 x 16 x 32^2 0.78x, 2 x 8 x 64^2 -> 256^2 0.72x,
// 4 x 8 x 96^2 0.65x, 4 x 16 x 128^2 0.82x.
constexpr int64_t kDirectMaxChannels = 4;
constexpr int64_t kDirectBackwardMaxSampleBytes = int64_t{1} << 20;

template <typename Family>
bool DirectForward(const Geometry& g) {
  return !g.channels_last && (Family::kTaps > 1 || g.channels <= kDirectMaxChannels);
}

template <typename T>
bool DirectBackward(const Geometry& g, int taps) {
  const bool planes_fit = g.channels * g.num_pixels * int64_t{sizeof(T)} <= kDirectBackwardMaxSampleBytes;
  return !g.channels_last && (g.channels <= kDirectMaxChannels || taps >= 8 || planes_fit);
}

// Asks for the grid a few lane groups ahead of point b. Profiled (perf,
// cpu-clock) on a 4x3x384^2 image, the hardware prefetcher sometimes lost the
// grid's stream among the random reads of the planes, and a quarter of the
// forward's time went to waiting for the grid.
template <typename T>
inline void PrefetchGrid(const T* grid, int64_t b, int ndim) {
  __builtin_prefetch(grid + (b + 16 * Simd<T>::kLanes) * ndim);
}

template <typename T, typename Family, int kNdim, Padding kPad>
void InterpolateDirect(const T* values, const T* grid, T* out, int64_t begin, int64_t end, const Geometry& g,
                       const Axis* axis_list) {
  // A local copy: the output stores (memcpy) may alias anything reachable
  // through a pointer, which kept the compiler from hoisting the per-axis
  // constants out of the loop.
  Axis axes[kNdim];
  std::copy(axis_list, axis_list + kNdim, axes);
  constexpr int kLanes = Simd<T>::kLanes;
  constexpr int kTaps = Power(Family::kTaps, kNdim);
  constexpr int kRun = kRunFor<T, Family::kTaps>;
  constexpr bool kFoldedRuns = kRun == 4 && kEveryTapInside<Family, kPad>;
  // ReadRun's condition. On Intel (see Processor) one channel's linear taps
  // read faster with gathers: 4 x 1 x 256^2, one thread, 0.46 -> 0.43 ms;
  // 1 x 1 x 96^3 trilinear 22 -> 20 ms. (Bilinear 2-D float32 with one
  // channel takes InterpolateOneChannel there.)
  const bool runs_fit = g.num_pixels >= kRun && !(kRun == 2 && g.channels == 1 && ThisProcessor().intel);
  const PixelStrides<kNdim> strides(axes);
  // Bilinear is software-pipelined: the taps of the next kLanes points are
  // computed before this group's reads, so that their loads issue as soon as
  // the group starts. Each group's reads wait on a long chain (grid,
  // coordinates, offsets, then the loads), and with the taps computed in line
  // an out-of-order window held only two or three groups. One thread, Intel
  // Xeon: 4 x 1 x 256^2 0.53 -> 0.48 ms (the loop alone), 16 x 16 x 128^2 ->
  // 32^2 1.00 -> 0.94 ms; trilinear and nearest were 5-8% slower so.
  constexpr bool kPipelined = std::is_same_v<Family, Linear> && kNdim == 2;
  LaneTapsFor<T, Family, kNdim> stages[kPipelined ? 2 : 1];
  const auto compute = [&](int64_t first, LaneTapsFor<T, Family, kNdim>* lanes) {
    PrefetchGrid(grid, first, kNdim);
    ComputeLaneTaps<T, Family, kNdim, kPad, false>(grid + first * kNdim,
                                                   static_cast<int>(std::min<int64_t>(kLanes, end - first)), axes,
                                                   strides, lanes);
  };
  if (kPipelined && begin < end) compute(begin, &stages[0]);
  int stage = 0;
  for (int64_t b = begin; b < end; b += kLanes, stage = kPipelined ? stage ^ 1 : 0) {
    const int count = static_cast<int>(std::min<int64_t>(kLanes, end - b));
    if (!kPipelined) {
      compute(b, &stages[0]);
    } else if (b + kLanes < end) {
      compute(b + kLanes, &stages[stage ^ 1]);
    }
    const LaneTapsFor<T, Family, kNdim>& lanes = stages[stage];
    const T* plane = values;
    T* row = out + b;
    if constexpr (kRun > 0 && !kFoldedRuns) {
      // Each row's x taps as one run, unless some lie inside and some not.
      if (runs_fit && LaneRunsAgree<T, Family, kPad, kRun, kTaps>(lanes)) {
        for (int64_t c = 0; c < g.channels; ++c, plane += g.num_pixels, row += g.num_points) {
          Vec<T> sum{};
          for (int t = 0; t < kTaps; t += kRun) {
            Vec<T> tap[kRun];
            ReadRun<kRun>(plane, lanes.read[t], lanes.inside[t], tap);
            for (int k = 0; k < kRun; ++k) sum += lanes.weight[t + k] * tap[k];
          }
          if (count == kLanes) {
            Store(row, sum);
          } else {
            for (int i = 0; i < count; ++i) row[i] = sum[i];
          }
        }
        continue;
      }
    }
    if constexpr (kFoldedRuns) {
      FoldedRuns<kTaps> folded;
      if (runs_fit && FoldRuns<kTaps>(lanes.offset, static_cast<int32_t>(g.num_pixels), &folded)) {
        const auto read_channels = [&](auto fold) {
          for (int64_t c = 0; c < g.channels; ++c, plane += g.num_pixels, row += g.num_points) {
            Vec<T> sum{};
            for (int t = 0; t < kTaps; t += 4) {
              Vec<T> tap[4];
              ReadFoldedRun<kTaps, decltype(fold)::value>(plane, folded, t / 4, tap);
              for (int k = 0; k < 4; ++k) sum += lanes.weight[t + k] * tap[k];
            }
            if (count == kLanes) {
              Store(row, sum);
            } else {
              for (int i = 0; i < count; ++i) row[i] = sum[i];
            }
          }
        };
        if (folded.folds) {
          read_channels(std::true_type{});
        } else {
          read_channels(std::false_type{});
        }
        continue;
      }
    }
    for (int64_t c = 0; c < g.channels; ++c, plane += g.num_pixels, row += g.num_points) {
      Vec<T> sum{};
      if constexpr (kTaps == 1) {
        // Nearest: the weight is 1 inside, and the gather reads 0 outside.
        sum = kEveryTapInside<Family, kPad> ? GatherInside(plane, lanes.offset[0]) : GatherVec(plane, lanes.offset[0]);
      } else {
        for (int t = 0; t < kTaps; ++t) {
          const Vec<T> value =
              kEveryTapInside<Family, kPad> ? GatherInside(plane, lanes.offset[t]) : GatherVec(plane, lanes.offset[t]);
          sum += lanes.weight[t] * value;
        }
      }
      if (count == kLanes) {
        Store(row, sum);
      } else {
        for (int i = 0; i < count; ++i) row[i] = sum[i];
      }
    }
  }
}

// Bilinear and nearest 2-D, float32, one channel, on Intel: the direct pass
// cut down to what one channel needs. The taps' weights, masks and offsets
// stay in registers (no LaneTaps, no pipelining); the inside tests compare
// the integer tap index, unsigned, with the axis size (a NaN, an infinity or
// a coordinate beyond 2^31 converts to INT_MIN, which fails them, as the
// floating-point tests do); and the reads are gathers masked by those tests.
// The same sums in the same order as InterpolateDirect, so the same bits.
// One thread, bilinear: 4 x 1 x 256^2 zeros 0.46 -> 0.37 ms; 4 x 1 x 512^2
// 2.4 -> 1.8 ms; 2 x 1 x 1024^2 7.7 -> 6.3 ms (with PrefetchGrid; without it
// 20 ms). For three channels the direct pass, whose pipelined runs of loads
// hide more of the planes' misses, stayed faster (4 x 3 x 384^2 border: 3.3
// against 3.6 ms).
#ifdef JAXGRIDSAMPLE_AVX2
template <typename Family, Padding kPad>
void InterpolateOneChannel(const float* plane, const float* grid, float* out, int64_t begin, int64_t end,
                           const Axis* axis_list) {
  static_assert(std::is_same_v<Family, Linear> || std::is_same_v<Family, Nearest>);
  using Unsigned = UnsignedIndex;
  constexpr int kLanes = Simd<float>::kLanes;
  const Axis axes[2] = {axis_list[0], axis_list[1]};  // local: see InterpolateDirect
  const uint32_t height = static_cast<uint32_t>(axes[0].size);
  const uint32_t width = static_cast<uint32_t>(axes[1].size);
  const auto index_of = [](Vec<float> position) {  // position is integer-valued
    return reinterpret_cast<Unsigned>(_mm256_cvttps_epi32(reinterpret_cast<__m256>(position)));
  };
  const auto gather = [&](Unsigned offset, Mask<float> inside) {
    return reinterpret_cast<Vec<float>>(_mm256_mask_i32gather_ps(
        _mm256_setzero_ps(), plane, reinterpret_cast<__m256i>(offset), reinterpret_cast<__m256>(inside), 4));
  };
  for (int64_t b = begin; b < end; b += kLanes) {
    const int count = static_cast<int>(std::min<int64_t>(kLanes, end - b));
    PrefetchGrid(grid, b, 2);
    Vec<float> gx, gy;
    if (count == kLanes) {
      LoadPairs(grid + 2 * b, &gx, &gy);
    } else {
      gx = LoadStrided(grid + 2 * b, 2, count);
      gy = LoadStrided(grid + 2 * b + 1, 2, count);
    }
    Mask<float> finite;  // unused: the forward needs neither this nor the multiplier
    Vec<float> multiplier;
    const Vec<float> py = PaddedCoordinate<float, kPad, 2>(gy, axes[0], &finite, &multiplier);
    const Vec<float> px = PaddedCoordinate<float, kPad, 2>(gx, axes[1], &finite, &multiplier);
    Vec<float> sum;
    if constexpr (std::is_same_v<Family, Nearest>) {
      const Unsigned row = index_of(RoundHalfEven<float>(py)), column = index_of(RoundHalfEven<float>(px));
      sum = gather(row * width + column, reinterpret_cast<Mask<float>>((row < height) & (column < width)));
    } else {
      const Vec<float> north = Floor<float>(py), west = Floor<float>(px);
      const Vec<float> ty = py - north, tx = px - west;
      const Vec<float> wy[2] = {1.0f - ty, ty}, wx[2] = {1.0f - tx, tx};
      const Unsigned row = index_of(north), column = index_of(west);
      const Mask<float> row_inside[2] = {reinterpret_cast<Mask<float>>(row < height),
                                         reinterpret_cast<Mask<float>>(row + 1 < height)};
      const Mask<float> column_inside[2] = {reinterpret_cast<Mask<float>>(column < width),
                                            reinterpret_cast<Mask<float>>(column + 1 < width)};
      const Unsigned flat = row * width + column;  // wraps where outside; never read there
      sum = Vec<float>{};
      for (int dy = 0; dy < 2; ++dy) {
        for (int dx = 0; dx < 2; ++dx) {
          const Mask<float> inside = row_inside[dy] & column_inside[dx];
          sum += Select<float>(inside, wy[dy] * wx[dx], Vec<float>{}) * gather(flat + (dy * width + dx), inside);
        }
      }
    }
    if (count == kLanes) {
      Store(out + b, sum);
    } else {
      for (int i = 0; i < count; ++i) out[b + i] = sum[i];
    }
  }
}
#endif

// The interleaved forward: bilinear, float32, 2 to 4 channels. Each point
// reads two rows of 2 x C values; from C planes they lie on 2C cache lines,
// and on a random grid over a large image nearly every one misses. So a
// thread first copies the sample's planes into a scratch of pixels, where a
// row's two taps span one or two lines, and the points then read those: 4
// floats per pixel for 3 or 4 channels (channels, then zeros), two points'
// taps per register; 2 floats per pixel for 2 channels, a 16-byte run per row
// and point (the 4-float layout doubled the memory and gained nothing there).
// One thread, random grid: 4 x 3 x 384^2 4.6 ms against 6.7 ms for the planes
// (PyTorch's kernel 7.7 ms); 4 x 2 x 384^2 2.8 against 4.8 ms (4.4). Where
// the points are much fewer than the pixels the copy costs more than it
// saves. The sums are those of InterpolateDirect, in the same order, so the
// results are the same bits.
constexpr int kPixelFloats = 4;
constexpr int64_t kInterleavedMaxPixels = int64_t{1} << 20;  // a scratch of at most 16 MiB per thread

// Whether this is an Intel processor and a sample's planes (plane_bytes)
// fit in its L2: where the rules below read the planes instead of a copy.
inline bool IntelPlanesInL2(int64_t plane_bytes) {
  const Processor& cpu = ThisProcessor();
  return cpu.intel && plane_bytes <= cpu.l2_bytes;
}

// Whether a copy of copy_bytes per sample pays, for planes of plane_bytes and
// an output of out_bytes per sample. On Intel, not where the planes fit in L2
// while the copy and the output written from it do not (presumably the
// output's lines evict the copy's before the points have read them). Two
// threads, copy against planes (PyTorch's kernel): bilinear 4 x 3 x 384^2
// 2.6 against 2.0 ms (1.9), 8 x 32 x 96^2 2.6 against 2.1 (2.0); nearest
// 4 x 3 x 256^2 0.94 against 0.45 (0.23). But where both fit, 4 x 16 x 96^2
// 0.36 against 0.50 (0.44) and 16 x 32 x 64^2 0.91 against 1.51 (1.41); and
// where the planes do not fit either, 4 x 16 x 256^2 5.4 against 8.9 (9.0).
// ``slack``: how far past L2 the copy and the output may reach and still copy.
inline bool CopyPays(int64_t plane_bytes, int64_t copy_bytes, int64_t out_bytes, int64_t slack = 0) {
  return !(IntelPlanesInL2(plane_bytes) && copy_bytes + out_bytes > ThisProcessor().l2_bytes + slack);
}

inline bool InterleavedForward(const Geometry& g) {
  if (g.channels_last || g.channels < 2 || g.channels > kPixelFloats || g.num_pixels > kInterleavedMaxPixels ||
      4 * g.num_points < g.num_pixels) {
    return false;
  }
  // On Intel, 2 or 3 channels whose planes fit in L2 read faster from the
  // planes (two threads: 8 x 3 x 224^2 reflection 1.04 against 1.34 ms,
  // PyTorch's kernel 1.70; 8 x 2 x 128^2 0.23 against 0.25; 16 x 3 x 64^2
  // 0.15 against 0.17). Four channels fill the copy's pixels and still gain
  // (8 x 4 x 96^2, one core: 0.39 against 0.42).
  const int64_t plane_bytes = g.channels * g.num_pixels * int64_t{sizeof(float)};
  if (g.channels < kPixelFloats && IntelPlanesInL2(plane_bytes)) return false;
  const int64_t floats_per_pixel = g.channels == 2 ? 2 : kPixelFloats;
  return CopyPays(plane_bytes,
                  floats_per_pixel * g.num_pixels * int64_t{sizeof(float)},
                  g.channels * g.num_points * int64_t{sizeof(float)});
}

// A thread's copy of one sample's planes, pixel-major, and which call and
// sample it holds: a thread runs a contiguous range of a call's units, which
// come in sample order (Workers::Run), so it copies each sample it works on
// once, bar the units it takes from another's range. Kept between calls, as
// ThreadTable.
struct InterleavedSample {
  std::vector<float> pixels;
  std::vector<float> gradients;  // the pixel-major backward's grad_input
  int64_t call = -1;
  int64_t sample = -1;

  // The copy of sample n for call ``of_call``, at least ``floats`` long:
  // made by copy(pixels) unless this thread already holds it.
  template <typename Copy>
  const float* Holding(int64_t of_call, int64_t n, size_t floats, const Copy& copy) {
    if (call != of_call || sample != n) {
      pixels.resize(std::max(pixels.size(), floats));
      copy(pixels.data());
      call = of_call;
      sample = n;
    }
    return pixels.data();
  }
};

inline InterleavedSample& ThreadInterleavedSample() {
  thread_local InterleavedSample sample;
  return sample;
}

inline std::atomic<int64_t>& InterleavedCalls() {
  static std::atomic<int64_t> calls{0};
  return calls;
}

// pixels[p * 4 + c] = planes[c * num_pixels + p] for c < channels, 0 after.
inline void InterleavePlanes(const float* planes, int64_t channels, int64_t num_pixels, float* pixels) {
  int64_t p = 0;
  for (; p + 8 <= num_pixels; p += 8) {
    __m256 row[kPixelFloats];  // 8 pixels of channel c
    for (int c = 0; c < kPixelFloats; ++c) {
      row[c] = c < channels ? _mm256_loadu_ps(planes + c * num_pixels + p) : _mm256_setzero_ps();
    }
    const __m256 t0 = _mm256_unpacklo_ps(row[0], row[1]);  // a0 b0 a1 b1 | a4 b4 a5 b5
    const __m256 t1 = _mm256_unpackhi_ps(row[0], row[1]);  // a2 b2 a3 b3 | a6 b6 a7 b7
    const __m256 t2 = _mm256_unpacklo_ps(row[2], row[3]);
    const __m256 t3 = _mm256_unpackhi_ps(row[2], row[3]);
    const __m256 p04 = _mm256_shuffle_ps(t0, t2, _MM_SHUFFLE(1, 0, 1, 0));  // pixel 0 | pixel 4
    const __m256 p15 = _mm256_shuffle_ps(t0, t2, _MM_SHUFFLE(3, 2, 3, 2));
    const __m256 p26 = _mm256_shuffle_ps(t1, t3, _MM_SHUFFLE(1, 0, 1, 0));
    const __m256 p37 = _mm256_shuffle_ps(t1, t3, _MM_SHUFFLE(3, 2, 3, 2));
    float* out = pixels + p * kPixelFloats;
    _mm256_storeu_ps(out, _mm256_permute2f128_ps(p04, p15, 0x20));
    _mm256_storeu_ps(out + 8, _mm256_permute2f128_ps(p26, p37, 0x20));
    _mm256_storeu_ps(out + 16, _mm256_permute2f128_ps(p04, p15, 0x31));
    _mm256_storeu_ps(out + 24, _mm256_permute2f128_ps(p26, p37, 0x31));
  }
  for (; p < num_pixels; ++p) {
    for (int c = 0; c < kPixelFloats; ++c) pixels[p * kPixelFloats + c] = c < channels ? planes[c * num_pixels + p] : 0.0f;
  }
}

// Two channels: 2 floats per pixel, unpadded, and 2 more after the last
// pixel (a run read there is 16 bytes). A row's two taps are one 16-byte load.
inline void InterleaveTwoPlanes(const float* planes, int64_t num_pixels, float* pixels) {
  int64_t p = 0;
  for (; p + 8 <= num_pixels; p += 8) {
    const __m256 a = _mm256_loadu_ps(planes + p);
    const __m256 b = _mm256_loadu_ps(planes + num_pixels + p);
    const __m256 low = _mm256_unpacklo_ps(a, b);   // a0 b0 a1 b1 | a4 b4 a5 b5
    const __m256 high = _mm256_unpackhi_ps(a, b);  // a2 b2 a3 b3 | a6 b6 a7 b7
    _mm256_storeu_ps(pixels + 2 * p, _mm256_permute2f128_ps(low, high, 0x20));
    _mm256_storeu_ps(pixels + 2 * p + 8, _mm256_permute2f128_ps(low, high, 0x31));
  }
  for (; p < num_pixels; ++p) {
    pixels[2 * p] = planes[p];
    pixels[2 * p + 1] = planes[num_pixels + p];
  }
  pixels[2 * num_pixels] = pixels[2 * num_pixels + 1] = 0.0f;
}

// Points [begin, end) of a 2-channel sample from its interleaved pixels, 8
// points per register as in InterpolateDirect: each row's run of two taps is
// one 16-byte load per point, [c0, c1] of x0 then of x1 (ReadRun<4>). Apart
// from InterpolateInterleaved, though their loops begin alike: one function
// with both bodies (if constexpr on the pixel size) compiled slower, single
// core 4 x 2 x 384^2 2.6 -> 3.0 ms and 4 x 3 x 384^2 4.1 -> 5.3 ms.
template <Padding kPad>
void InterpolateTwoChannels(const float* pixels, const float* grid, float* out, int64_t begin, int64_t end,
                            const Geometry& g, const Axis* axis_list) {
  Axis axes[2];  // a local copy, as in InterpolateDirect
  std::copy(axis_list, axis_list + 2, axes);
  const PixelStrides<2> strides(axes);
  LaneTapsFor<float, Linear, 2> lanes;
  for (int64_t b = begin; b < end; b += 8) {
    const int count = static_cast<int>(std::min<int64_t>(8, end - b));
    PrefetchGrid(grid, b, 2);
    ComputeLaneTaps<float, Linear, 2, kPad, false>(grid + b * 2, count, axes, strides, &lanes);
    Vec<float> sum[2] = {};
    if (LaneRunsAgree<float, Linear, kPad, 2, 4>(lanes)) {
      for (int t = 0; t < 4; t += 2) {
        Vec<float> run[4];  // channel 0 and 1 of tap t, then of tap t + 1
        ReadRun<4>(pixels, lanes.read[t] * 2, lanes.inside[t], run);
        for (int c = 0; c < 2; ++c) {
          sum[c] += lanes.weight[t] * run[c];
          sum[c] += lanes.weight[t + 1] * run[2 + c];
        }
      }
    } else {
      for (int t = 0; t < 4; ++t) {
        for (int c = 0; c < 2; ++c) sum[c] += lanes.weight[t] * GatherVec(pixels + c, lanes.offset[t] * 2);
      }
    }
    for (int c = 0; c < 2; ++c) {
      float* row = out + c * g.num_points + b;
      if (count == 8) {
        Store(row, sum[c]);
      } else {
        for (int i = 0; i < count; ++i) row[i] = sum[c][i];
      }
    }
  }
}

// Points [begin, end) of one sample from its interleaved pixels: two points
// per register (4 channels each), then a transpose to channel rows.
template <Padding kPad>
void InterpolateInterleaved(const float* pixels, const float* grid, float* out, int64_t begin, int64_t end,
                            const Geometry& g, const Axis* axis_list) {
  Axis axes[2];  // a local copy, as in InterpolateDirect
  std::copy(axis_list, axis_list + 2, axes);
  const PixelStrides<2> strides(axes);
  LaneTapsFor<float, Linear, 2> lanes;
  for (int64_t b = begin; b < end; b += 8) {
    const int count = static_cast<int>(std::min<int64_t>(8, end - b));
    PrefetchGrid(grid, b, 2);
    // Lanes past count hold the taps of grid value 0: inside, never stored.
    ComputeLaneTaps<float, Linear, 2, kPad, false>(grid + b * 2, count, axes, strides, &lanes);
    __m256 pair[4];  // points 2j | 2j + 1, channels 0..3 each
    for (int j = 0; j < 4; ++j) {
      const int i = 2 * j;
      const __m256i spread = _mm256_setr_epi32(i, i, i, i, i + 1, i + 1, i + 1, i + 1);
      __m256 sum = _mm256_setzero_ps();
      for (int t = 0; t < 4; ++t) {
        // read is 0 outside, so both loads stay in the scratch; the mask
        // zeroes them (a product with weight 0 could be NaN).
        const auto low = static_cast<uint32_t>(lanes.read[t][i]);
        const auto high = static_cast<uint32_t>(lanes.read[t][i + 1]);
        const __m256 value = _mm256_set_m128(_mm_loadu_ps(pixels + size_t{high} * kPixelFloats),
                                             _mm_loadu_ps(pixels + size_t{low} * kPixelFloats));
        const __m256 inside =
            _mm256_permutevar8x32_ps(_mm256_castsi256_ps(reinterpret_cast<__m256i>(lanes.inside[t])), spread);
        const __m256 weight = _mm256_permutevar8x32_ps(reinterpret_cast<__m256>(lanes.weight[t]), spread);
        sum = _mm256_add_ps(sum, _mm256_mul_ps(weight, _mm256_and_ps(value, inside)));
      }
      pair[j] = sum;
    }
    const __m256 p04 = _mm256_permute2f128_ps(pair[0], pair[2], 0x20);  // point 0 | point 4
    const __m256 p15 = _mm256_permute2f128_ps(pair[0], pair[2], 0x31);
    const __m256 p26 = _mm256_permute2f128_ps(pair[1], pair[3], 0x20);
    const __m256 p37 = _mm256_permute2f128_ps(pair[1], pair[3], 0x31);
    const __m256 t0 = _mm256_unpacklo_ps(p04, p15);  // p0c0 p1c0 p0c1 p1c1 | p4c0 p5c0 p4c1 p5c1
    const __m256 t1 = _mm256_unpackhi_ps(p04, p15);
    const __m256 t2 = _mm256_unpacklo_ps(p26, p37);
    const __m256 t3 = _mm256_unpackhi_ps(p26, p37);
    const __m256 channel[kPixelFloats] = {
        _mm256_shuffle_ps(t0, t2, _MM_SHUFFLE(1, 0, 1, 0)), _mm256_shuffle_ps(t0, t2, _MM_SHUFFLE(3, 2, 3, 2)),
        _mm256_shuffle_ps(t1, t3, _MM_SHUFFLE(1, 0, 1, 0)), _mm256_shuffle_ps(t1, t3, _MM_SHUFFLE(3, 2, 3, 2))};
    for (int64_t c = 0; c < g.channels; ++c) {
      float* row = out + c * g.num_points + b;
      if (count == 8) {
        _mm256_storeu_ps(row, channel[c]);
      } else {
        alignas(32) float values[8];
        _mm256_store_ps(values, channel[c]);
        std::copy(values, values + count, row);
      }
    }
  }
}

// The pixel-major forward: float32, every family, from a few channels on.
// A point's taps lie on C cache lines each when read from C planes, and on a
// random grid most of them miss, while each lane of a gather is a load of its
// own. So, as for the interleaved bilinear forward, the sample's planes are
// first copied to pixels of C values (rounded up to 8, zeros after), where a
// tap's channels are one or a few whole lines, and a pixel of zeros is added
// for the taps that lie outside; then 8 points' taps are read 8 channels at a
// time, summed as InterpolateDirect sums them (the same bits), and transposed
// to channel rows. Two threads, random grid, planes against the copy
// (PyTorch's kernel): 8 x 32 x 96^2 bilinear 4.3 -> 2.1 ms (4.1), 2 x 8 x 48^3
// trilinear 5.1 -> 3.2 (12.0), 4 x 8 x 128^2 bicubic 1.7 -> 0.94 (2.0); one
// thread, nearest 8 x 16 x 128^2 3.8 -> 2.1 (3.5). Where the points are much
// fewer than the pixels the copy costs more than it saves, and so it does
// with fewer channels than these (2 x 2 x 48^3 trilinear 1.7 -> 2.9 ms,
// 4 x 2 x 128^2 bicubic 0.39 -> 0.73; bilinear with 2 to 4 channels takes the
// interleaved copy). PixelMajorForward (above) says where it applies.

// Whether the forward copies (the backward keys on PixelMajorForward alone).
// With twice the points of the pixels or more (upsampling), each pixel's
// channels are read often enough for the copy to pay even where CopyPays
// says no (one Intel core, copy against planes: bilinear 2 x 32 x 64^2 ->
// 128^2 0.87 against 1.60 ms (PyTorch's kernel 1.62); nearest 2 x 8 x
// 128^2 -> 256^2 0.41 against 0.67 (0.66); 4 x 32 x 64^2 -> 96^2 level).
//
// On Intel, nearest with up to kDirectMaxChannels channels whose planes fit in
// L2 reads them directly, upsampling or not: its one gather per channel
// costs less than the copy (two threads: 4 x 3 x 128^2 0.099 -> 0.075 ms,
// PyTorch's kernel 0.059; 16 x 3 x 64^2 0.109 -> 0.068 (0.065); 2 x 3 x
// 128^2 -> 256^2 0.137 -> 0.113 (0.105)).
template <typename Family>
inline bool PixelMajorForwardCopies(const Geometry& g) {
  if (!PixelMajorForward<Family>(g)) return false;
  const int64_t plane_bytes = g.channels * g.num_pixels * int64_t{sizeof(float)};
  if (Family::kTaps == 1 && g.channels <= kDirectMaxChannels && IntelPlanesInL2(plane_bytes)) return false;
  // Bilinear still gained from the copy just past L2: 4 x 16 x 128^2 (copy
  // and output 64 bytes beyond 2 MiB), bench.py's timing, three runs: 0.96,
  // 0.94, 0.98 -> 0.87, 0.79, 0.71 ms; 8 x 16 x 128^2 border 1.66, 1.74,
  // 1.84 -> 1.42, 1.53, 1.83. Further past (8 x 32 x 96^2, 18%), it lost.
  const int64_t slack = std::is_same_v<Family, Linear> ? ThisProcessor().l2_bytes / 8 : 0;
  return Upsampling(g) ||
         CopyPays(plane_bytes, (g.num_pixels + 1) * PixelMajorStride(g.channels) * int64_t{sizeof(float)},
                  g.channels * g.num_points * int64_t{sizeof(float)}, slack);
}

// An 8 x 8 transpose of floats: rows become columns.
inline void Transpose8(__m256* r) {
  const __m256 t0 = _mm256_unpacklo_ps(r[0], r[1]), t1 = _mm256_unpackhi_ps(r[0], r[1]);
  const __m256 t2 = _mm256_unpacklo_ps(r[2], r[3]), t3 = _mm256_unpackhi_ps(r[2], r[3]);
  const __m256 t4 = _mm256_unpacklo_ps(r[4], r[5]), t5 = _mm256_unpackhi_ps(r[4], r[5]);
  const __m256 t6 = _mm256_unpacklo_ps(r[6], r[7]), t7 = _mm256_unpackhi_ps(r[6], r[7]);
  const __m256 s0 = _mm256_shuffle_ps(t0, t2, _MM_SHUFFLE(1, 0, 1, 0));
  const __m256 s1 = _mm256_shuffle_ps(t0, t2, _MM_SHUFFLE(3, 2, 3, 2));
  const __m256 s2 = _mm256_shuffle_ps(t1, t3, _MM_SHUFFLE(1, 0, 1, 0));
  const __m256 s3 = _mm256_shuffle_ps(t1, t3, _MM_SHUFFLE(3, 2, 3, 2));
  const __m256 s4 = _mm256_shuffle_ps(t4, t6, _MM_SHUFFLE(1, 0, 1, 0));
  const __m256 s5 = _mm256_shuffle_ps(t4, t6, _MM_SHUFFLE(3, 2, 3, 2));
  const __m256 s6 = _mm256_shuffle_ps(t5, t7, _MM_SHUFFLE(1, 0, 1, 0));
  const __m256 s7 = _mm256_shuffle_ps(t5, t7, _MM_SHUFFLE(3, 2, 3, 2));
  r[0] = _mm256_permute2f128_ps(s0, s4, 0x20);
  r[1] = _mm256_permute2f128_ps(s1, s5, 0x20);
  r[2] = _mm256_permute2f128_ps(s2, s6, 0x20);
  r[3] = _mm256_permute2f128_ps(s3, s7, 0x20);
  r[4] = _mm256_permute2f128_ps(s0, s4, 0x31);
  r[5] = _mm256_permute2f128_ps(s1, s5, 0x31);
  r[6] = _mm256_permute2f128_ps(s2, s6, 0x31);
  r[7] = _mm256_permute2f128_ps(s3, s7, 0x31);
}

// pixels[p * stride + c] = planes[c * num_pixels + p]; 0 for c >= channels.
inline void PixelMajorPlanes(const float* planes, int64_t channels, int64_t num_pixels, int64_t begin, int64_t end,
                             float* pixels) {
  // Tiles of 256 pixels, 8 channels at a time: each plane is read in runs of
  // 1 KiB, and the tile's pixels are written while they are in cache.
  constexpr int64_t kTile = 256;
  const int64_t stride = PixelMajorStride(channels);
  const int64_t vector_end = begin + (end - begin) / 8 * 8;
  for (int64_t tile = begin; tile < vector_end; tile += kTile) {
    const int64_t tile_end = std::min(vector_end, tile + kTile);
    for (int64_t c0 = 0; c0 < stride; c0 += 8) {
      for (int64_t p = tile; p < tile_end; p += 8) {
        __m256 r[8];  // r[k]: pixels p .. p + 7 of channel c0 + k
        for (int k = 0; k < 8; ++k) {
          r[k] = c0 + k < channels ? _mm256_loadu_ps(planes + (c0 + k) * num_pixels + p) : _mm256_setzero_ps();
        }
        Transpose8(r);  // r[k]: channels c0 .. c0 + 7 of pixel p + k
        for (int k = 0; k < 8; ++k) _mm256_storeu_ps(pixels + (p + k) * stride + c0, r[k]);
      }
    }
  }
  for (int64_t p = vector_end; p < end; ++p) {
    for (int64_t c = 0; c < stride; ++c) pixels[p * stride + c] = c < channels ? planes[c * num_pixels + p] : 0.0f;
  }
}

// A whole sample's pixel-major copy, and after it the pixel of zeros that
// outside taps read.
inline void PixelMajorSample(const float* planes, int64_t channels, int64_t num_pixels, float* pixels) {
  PixelMajorPlanes(planes, channels, num_pixels, 0, num_pixels, pixels);
  const int64_t stride = PixelMajorStride(channels);
  std::fill_n(pixels + num_pixels * stride, stride, 0.0f);
}

// Points [begin, end) of one sample from its pixel-major copy, which ends
// with a pixel of zeros (at index num_pixels) that outside taps read.
template <typename Family, int kNdim, Padding kPad>
void InterpolatePixelMajor(const float* pixels, const float* grid, float* out, int64_t begin, int64_t end,
                           const Geometry& g, const Axis* axis_list) {
  Axis axes[kNdim];  // a local copy, as in InterpolateDirect
  std::copy(axis_list, axis_list + kNdim, axes);
  constexpr int kTaps = Power(Family::kTaps, kNdim);
  const PixelStrides<kNdim> strides(axes);
  const int64_t stride = PixelMajorStride(g.channels);
  const Index<float> zero_pixel = Index<float>{} + static_cast<int32_t>(g.num_pixels);
  // Blocks of 64 points, 8 channels at a time: the 8 output rows then take
  // 256 contiguous bytes each, where 8 points at all channels would write a
  // line in each of C rows, and rows a power of two apart share a cache set
  // (4 x 32 x 64^2: 0.26 ms, against 0.15 ms in blocks).
  constexpr int kBlock = 64;
  LaneTapsFor<float, Family, kNdim> lanes;
  alignas(32) uint32_t read[kTaps][kBlock];
  alignas(32) float weight[kTaps][kBlock];
  for (int64_t first = begin; first < end; first += kBlock) {
    const int block = static_cast<int>(std::min<int64_t>(kBlock, end - first));
    for (int b = 0; b < block; b += 8) {
      const int count = std::min(8, block - b);
      PrefetchGrid(grid, first + b, kNdim);
      // Lanes past count hold the taps of grid value 0: inside, never stored.
      ComputeLaneTaps<float, Family, kNdim, kPad, false>(grid + (first + b) * kNdim, count, axes, strides, &lanes);
      for (int t = 0; t < kTaps; ++t) {
        Store(reinterpret_cast<int32_t*>(read[t] + b), lanes.inside[t] ? lanes.read[t] : zero_pixel);
        if constexpr (kTaps > 1) Store(weight[t] + b, lanes.weight[t]);
      }
    }
    for (int64_t c0 = 0; c0 < g.channels; c0 += 8) {
      const int channels = static_cast<int>(std::min<int64_t>(8, g.channels - c0));
      for (int b = 0; b < block; b += 8) {
        const int count = std::min(8, block - b);
        __m256 r[8];  // r[i]: channels c0 .. c0 + 7 of point b + i
        for (int i = 0; i < 8; ++i) {
          const auto tap = [&](int t) { return _mm256_loadu_ps(pixels + size_t{read[t][b + i]} * stride + c0); };
          if constexpr (kTaps == 1) {
            r[i] = tap(0);
          } else {
            // The sum of InterpolateDirect, in its order.
            __m256 sum = _mm256_setzero_ps();
            for (int t = 0; t < kTaps; ++t) {
              sum = _mm256_add_ps(sum, _mm256_mul_ps(_mm256_set1_ps(weight[t][b + i]), tap(t)));
            }
            r[i] = sum;
          }
        }
        Transpose8(r);  // r[k]: channel c0 + k of the 8 points
        for (int k = 0; k < channels; ++k) {
          float* row = out + (c0 + k) * g.num_points + first + b;
          if (count == 8) {
            _mm256_storeu_ps(row, r[k]);
          } else {
            alignas(32) float values[8];
            _mm256_store_ps(values, r[k]);
            std::copy(values, values + count, row);
          }
        }
      }
    }
  }
}

// The pixel-major backward: float32, the families and channel counts of the
// pixel-major forward, batches of 4 samples or more (whose grid gradient is
// one channel group, see ChannelGroups). A sample's values are copied as for
// the forward, and its grad_input is added up pixel-major, 8 channels of a
// tap at a time, then copied back to planes. The sums are BackwardDirect's,
// in its order: grad_input per pixel tap by tap for each 8 points, the grid
// gradient per tap, then per channel. Units are whole samples, so that no two
// threads add to one pixel.

// planes[c * num_pixels + p] = pixels[p * stride + c] for c < channels.
inline void PlanesFromPixelMajor(const float* pixels, int64_t channels, int64_t num_pixels, float* planes) {
  constexpr int64_t kTile = 256;
  const int64_t stride = PixelMajorStride(channels);
  const int64_t vector_end = num_pixels / 8 * 8;
  for (int64_t tile = 0; tile < vector_end; tile += kTile) {
    const int64_t tile_end = std::min(vector_end, tile + kTile);
    for (int64_t c0 = 0; c0 < channels; c0 += 8) {
      const int rows = static_cast<int>(std::min<int64_t>(8, channels - c0));
      for (int64_t p = tile; p < tile_end; p += 8) {
        __m256 r[8];  // r[k]: channels c0 .. c0 + 7 of pixel p + k
        for (int k = 0; k < 8; ++k) r[k] = _mm256_loadu_ps(pixels + (p + k) * stride + c0);
        Transpose8(r);  // r[k]: pixels p .. p + 7 of channel c0 + k
        for (int k = 0; k < rows; ++k) _mm256_storeu_ps(planes + (c0 + k) * num_pixels + p, r[k]);
      }
    }
  }
  for (int64_t p = vector_end; p < num_pixels; ++p) {
    for (int64_t c = 0; c < channels; ++c) planes[c * num_pixels + p] = pixels[p * stride + c];
  }
}

// One sample's backward from its pixel-major values (ending with a pixel of
// zeros) into pixel-major gradients (zeroed, with one more pixel that the
// outside taps add to and nobody reads); grid_out (num_points, kNdim), x first.
template <typename Family, int kNdim, Padding kPad>
void BackwardPixelMajor(const float* pixels, const float* grid, const float* grad_out, float* gradients,
                        float* grid_out, const Geometry& g, const Axis* axis_list) {
  Axis axes[kNdim];  // a local copy, as in InterpolateDirect
  std::copy(axis_list, axis_list + kNdim, axes);
  constexpr int kTaps = Power(Family::kTaps, kNdim);
  constexpr int kStep = std::max(1, kRunFor<float, Family::kTaps>);  // BackwardDirect's
  constexpr bool kSlopes = Family::kHasSlope;
  const PixelStrides<kNdim> strides(axes);
  const int64_t stride = PixelMajorStride(g.channels);
  const Index<float> zero_pixel = Index<float>{} + static_cast<int32_t>(g.num_pixels);
  constexpr int kBlock = 64;  // as in InterpolatePixelMajor
  LaneTapsFor<float, Family, kNdim> lanes;
  alignas(32) uint32_t read[kTaps][kBlock];
  alignas(32) float weight[kTaps][kBlock];
  alignas(32) float slope[kSlopes ? kNdim : 1][kSlopes ? kTaps : 1][kBlock];
  alignas(32) float total[kNdim][kBlock];
  for (int64_t first = 0; first < g.num_points; first += kBlock) {
    const int block = static_cast<int>(std::min<int64_t>(kBlock, g.num_points - first));
    for (int b = 0; b < block; b += 8) {
      const int count = std::min(8, block - b);
      PrefetchGrid(grid, first + b, kNdim);
      ComputeLaneTaps<float, Family, kNdim, kPad, kSlopes>(grid + (first + b) * kNdim, count, axes, strides, &lanes);
      for (int t = 0; t < kTaps; ++t) {
        Store(reinterpret_cast<int32_t*>(read[t] + b), lanes.inside[t] ? lanes.read[t] : zero_pixel);
        Store(weight[t] + b, lanes.weight[t]);
        if constexpr (kSlopes) {
          for (int s = 0; s < kNdim; ++s) Store(slope[s][t] + b, lanes.slope[s][t]);
        }
      }
    }
    if constexpr (kSlopes) {
      for (int s = 0; s < kNdim; ++s) std::fill(total[s], total[s] + kBlock, 0.0f);
    }
    for (int64_t c0 = 0; c0 < g.channels; c0 += 8) {
      const int channels = static_cast<int>(std::min<int64_t>(8, g.channels - c0));
      for (int b = 0; b < block; b += 8) {
        const int count = std::min(8, block - b);
        __m256 incoming[8];  // incoming[i]: channels c0 .. c0 + 7 of point b + i
        for (int k = 0; k < 8; ++k) {
          const float* row = grad_out + (c0 + k) * g.num_points + first + b;
          if (k >= channels) {
            incoming[k] = _mm256_setzero_ps();
          } else if (count == 8) {
            incoming[k] = _mm256_loadu_ps(row);
          } else {
            alignas(32) float part[8] = {};
            std::copy(row, row + count, part);
            incoming[k] = _mm256_load_ps(part);
          }
        }
        Transpose8(incoming);
        // grad_input: run by run of x taps, point by point, as BackwardDirect
        // adds them (AddRun).
        for (int t0 = 0; t0 < kTaps; t0 += kStep) {
          for (int i = 0; i < count; ++i) {
            for (int t = t0; t < t0 + kStep; ++t) {
              float* at = gradients + size_t{read[t][b + i]} * stride + c0;
              const __m256 update = _mm256_mul_ps(_mm256_set1_ps(weight[t][b + i]), incoming[i]);
              _mm256_storeu_ps(at, _mm256_add_ps(_mm256_loadu_ps(at), update));
            }
          }
        }
        __m256 product[kNdim][8];  // per axis: the derivative times incoming, point-major
        if constexpr (kSlopes) {
          for (int i = 0; i < count; ++i) {
            __m256 derivative[kNdim];
            for (int s = 0; s < kNdim; ++s) derivative[s] = _mm256_setzero_ps();
            for (int t = 0; t < kTaps; ++t) {
              const __m256 value = _mm256_loadu_ps(pixels + size_t{read[t][b + i]} * stride + c0);
              for (int s = 0; s < kNdim; ++s) {
                derivative[s] = _mm256_add_ps(derivative[s], _mm256_mul_ps(_mm256_set1_ps(slope[s][t][b + i]), value));
              }
            }
            for (int s = 0; s < kNdim; ++s) product[s][i] = _mm256_mul_ps(derivative[s], incoming[i]);
          }
        }
        if constexpr (kSlopes) {
          for (int s = 0; s < kNdim; ++s) {
            for (int i = count; i < 8; ++i) product[s][i] = _mm256_setzero_ps();
            Transpose8(product[s]);  // product[s][k]: channel c0 + k of the 8 points
            __m256 sum = _mm256_load_ps(total[s] + b);
            for (int k = 0; k < channels; ++k) sum = _mm256_add_ps(sum, product[s][k]);
            _mm256_store_ps(total[s] + b, sum);
          }
        }
      }
    }
    if constexpr (kSlopes) StoreGridGradient<float, kNdim, kBlock>(total, block, grid_out + first * kNdim);
  }
}

// The direct channels-first backward, over all points of one sample and
// channels [c_begin, c_end): as the forward above, each kLanes points' taps
// (and slopes) stay in registers while every channel scatter-adds its
// gradient and, with_grid, gathers the values for the grid gradient, which it
// writes to grid_out (num_points, kNdim), x first. The same sums in the same
// order as BackwardBlock.
template <typename T, typename Family, int kNdim, Padding kPad>
void BackwardDirect(const T* values, const T* grid, const T* grad_out, T* grad_values, T* grid_out,
                    const Geometry& g, const Axis* axis_list, int64_t c_begin, int64_t c_end, bool with_grid) {
  Axis axes[kNdim];  // a local copy, as in InterpolateDirect
  std::copy(axis_list, axis_list + kNdim, axes);
  constexpr int kLanes = Simd<T>::kLanes;
  constexpr int kTaps = Power(Family::kTaps, kNdim);
  constexpr int kRun = kRunFor<T, Family::kTaps>;
  const bool runs_fit = g.num_pixels >= kRun;  // ReadRun's condition
  const PixelStrides<kNdim> strides(axes);
  LaneTapsFor<T, Family, kNdim> lanes;
  alignas(32) int32_t clamped[kTaps][kLanes];
  for (int64_t b = 0; b < g.num_points; b += kLanes) {
    const int count = static_cast<int>(std::min<int64_t>(kLanes, g.num_points - b));
    PrefetchGrid(grid, b, kNdim);
    if (with_grid) {
      ComputeLaneTaps<T, Family, kNdim, kPad, true>(grid + b * kNdim, count, axes, strides, &lanes);
    } else {
      ComputeLaneTaps<T, Family, kNdim, kPad, false>(grid + b * kNdim, count, axes, strides, &lanes);
    }
    Mask<T> inside[kTaps];
    for (int t = 0; t < kTaps; ++t) {
      const Index<T> offset = lanes.offset[t];
      Store(clamped[t], offset & ~(offset >> 31));
      inside[t] = __builtin_convertvector(offset >= 0, Mask<T>);
    }
    // Each row's x taps are one run where they can be: the grid gradient
    // reads it as the forward does (the gathers were most of the 1-channel
    // backward), and grad_input adds to it (AddRun).
    constexpr int kStep = kRun > 0 ? kRun : 1;
    bool runs = false;
    if constexpr (kRun > 0) runs = runs_fit && LaneRunsAgree<T, Family, kPad, kRun, kTaps>(lanes);
    Vec<T> total[kNdim] = {};
    for (int64_t c = c_begin; c < c_end; ++c) {
      const T* plane = values + c * g.num_pixels;
      T* grad_plane = grad_values + c * g.num_pixels;
      const T* row = grad_out + c * g.num_points + b;
      // Asks for the incoming gradient 8 lane groups ahead: as with the grid
      // (PrefetchGrid), the hardware prefetcher lost these streams among the
      // random reads and writes (perf put 40% of a 4 x 3 x 384^2 backward on
      // this load); same process, that backward 20.1 -> 16.3 ms.
      __builtin_prefetch(row + 8 * kLanes);
      const Vec<T> incoming = count == kLanes ? LoadVec(row) : LoadStrided(row, 1, count);
      Vec<T> derivative[kNdim] = {};
      for (int t0 = 0; t0 < kTaps; t0 += kStep) {
        Vec<T> value[kStep];
        if (Family::kHasSlope && with_grid) {
          if constexpr (kRun > 0) {
            if (runs) ReadRun<kRun>(plane, lanes.read[t0], lanes.inside[t0], value);
          }
          if (!runs) {  // always so without runs (kRun == 0)
            for (int k = 0; k < kStep; ++k) value[k] = GatherVec(plane, lanes.offset[t0 + k]);
          }
        }
        Vec<T> update[kStep];
        for (int k = 0; k < kStep; ++k) {
          const int t = t0 + k;
          if (Family::kHasSlope && with_grid) {
            for (int s = 0; s < kNdim; ++s) derivative[s] += lanes.slope[s][t] * value[k];
          }
          // An outside tap adds +0 (ATen skips it: a NaN or inf incoming
          // gradient must not reach the pixel its clamped offset borrows).
          update[k] = Select<T>(inside[t], lanes.weight[t] * incoming, Vec<T>{});
        }
        if constexpr (kRun > 0) {
          if (runs) {
            AddRun<kRun>(grad_plane, clamped[t0], update, count);
            continue;
          }
        }
        alignas(32) T added[kStep][kLanes];
        for (int k = 0; k < kStep; ++k) Store(added[k], update[k]);
        AddLaneByLane<T, kStep, kLanes>(grad_plane, clamped + t0, added, count);
      }
      if (Family::kHasSlope && with_grid) {
        for (int s = 0; s < kNdim; ++s) total[s] += derivative[s] * incoming;
      }
    }
    if (Family::kHasSlope && with_grid) {
      if (kNdim == 2 && count == kLanes) {
        StorePairs(grid_out + b * kNdim, total[kNdim - 1], total[0]);  // x first
      } else {
        for (int i = 0; i < count; ++i) {
          for (int s = 0; s < kNdim; ++s) grid_out[(b + i) * kNdim + (kNdim - 1 - s)] = total[s][i];
        }
      }
    }
  }
}
#endif

// On Intel (see Processor) the table pass beat the direct one for bilinear
// 2-D downsampling with many channels, where each channel plane is swept over
// a block of points while it is in cache (and, since, the next plane is
// prefetched). Two threads (PyTorch's kernel): 16 x 16 x 128^2 -> 32^2
// reflection 0.71 -> 0.58 ms (0.84), 8 x 32 x 128^2 -> 32^2 border 0.78 ->
// 0.56 (1.02); 4 x 16 x 128^2 -> 64^2 level (0.22). With as many points as
// pixels the table was slower at 16 channels (4 x 16 x 128^2 -> 128^2 0.79
// -> 0.96 ms, -> 256^2 2.7 -> 3.3 ms), but faster from 32 on: 8 x 32 x 96^2
// 2.0 -> 1.8 ms (2.1), 4 x 32 x 128^2 2.15 -> 1.85 (2.3), 4 x 32 x 128^2 ->
// 90^2 1.15 -> 0.86 (1.15). On AMD the direct pass was the faster one
// (downsampling 0.89 -> 0.41 of torch's time when it replaced the table).
#ifdef JAXGRIDSAMPLE_AVX2
template <typename Family, int kNdim>
inline bool IntelTableForward(const Geometry& g) {
  const bool downsampling = 4 * g.num_points <= g.num_pixels;
  return std::is_same_v<Family, Linear> && kNdim == 2 && (g.channels >= 32 || (g.channels >= 16 && downsampling)) &&
         ThisProcessor().intel;
}

// And from 48 channels on, unless upsampling, the table also beats the
// pixel-major copy there (since the table's per-group work moved out of the
// channel loop). Two threads, bench.py's timing, table against copy (ratios
// to PyTorch's kernel, two runs): 8 x 48 x 48^2 0.81, 0.83 against 0.88,
// 1.00; 4 x 48 x 64^2 0.77, 0.96 against 0.93, 1.02; 8 x 64 x 32^2 border
// 0.48, 0.37 against 0.64, 0.51; 4 x 128 x 32^2 0.44, 0.35 against 0.52,
// 0.50; 4 x 64 x 48^2 level. With 32 channels the copy was level or ahead
// (8 x 32 x 48^2 0.83, 0.81 against 1.11, 0.98), and so it was upsampling
// (2 x 48 x 64^2 -> 128^2 0.75, 0.67 against 0.87, 0.87).
template <typename Family, int kNdim>
inline bool IntelTableOverCopy(const Geometry& g) {
  return IntelTableForward<Family, kNdim>(g) && g.channels >= 48 && !Upsampling(g);
}
#endif

template <typename T, typename Family, int kNdim, Padding kPad>
void Forward(ffi::ThreadPool& pool, const T* values, const T* grid, T* out, const Geometry& g, const Axis* axes) {
  using Block = TableFor<T, Family, kNdim>;
  const int64_t per_unit = PointsPerUnit(g, pool.num_threads(), Block::kPoints);
  const int64_t units_per_sample = (g.num_points + per_unit - 1) / per_unit;
  const int64_t sample_values = g.channels * g.num_pixels;
  const int64_t sample_out = g.channels * g.num_points;
#ifdef JAXGRIDSAMPLE_AVX2
  if constexpr (std::is_same_v<T, float> && std::is_same_v<Family, Linear> && kNdim == 2) {
    if (InterleavedForward(g)) {
      // Units are parts of samples. A thread copies a sample when it first
      // runs a part of it, and as ParallelFor hands out contiguous ranges of
      // units, a sample is copied twice only where two ranges meet in it, or
      // where a thread takes parts from another's range.
      const int64_t call = ++InterleavedCalls();
      ParallelFor(pool, g.num_batch * units_per_sample, WorkOf(g, Block::kTaps), [&](int64_t unit) {
        const int64_t n = unit / units_per_sample;
        const int64_t begin = (unit % units_per_sample) * per_unit;
        const int64_t end = std::min(g.num_points, begin + per_unit);
        const size_t floats = g.num_pixels * kPixelFloats + 2;
        const float* pixels = ThreadInterleavedSample().Holding(call, n, floats, [&](float* to) {
          if (g.channels == 2) {
            InterleaveTwoPlanes(values + n * sample_values, g.num_pixels, to);
          } else {
            InterleavePlanes(values + n * sample_values, g.channels, g.num_pixels, to);
          }
        });
        if (g.channels == 2) {
          InterpolateTwoChannels<kPad>(pixels, grid + n * g.num_points * 2, out + n * sample_out, begin, end, g, axes);
        } else {
          InterpolateInterleaved<kPad>(pixels, grid + n * g.num_points * 2, out + n * sample_out, begin, end, g, axes);
        }
      });
      return;
    }
  }
  if constexpr (std::is_same_v<T, float>) {
    if (PixelMajorForwardCopies<Family>(g) && !IntelTableOverCopy<Family, kNdim>(g)) {
      const int64_t stride = PixelMajorStride(g.channels);
      const int64_t threads = pool.num_threads();
      const int64_t sample_pixels = (g.num_pixels + 1) * stride;  // and a pixel of zeros
      const auto zero_pixel = [&](float* pixels) { std::fill_n(pixels + g.num_pixels * stride, stride, 0.0f); };
      if (g.num_batch < threads && g.num_batch * sample_pixels <= kPixelMajorMaxFloats) {
        // Fewer samples than threads: the threads copy the batch together,
        // into the caller's scratch (its thread waits in ParallelFor until
        // both passes are done), then share out the points.
        InterleavedSample& shared = ThreadInterleavedSample();
        shared.pixels.resize(std::max<size_t>(shared.pixels.size(), g.num_batch * sample_pixels));
        shared.call = -1;
        float* pixels = shared.pixels.data();
        for (int64_t n = 0; n < g.num_batch; ++n) zero_pixel(pixels + n * sample_pixels);
        constexpr int64_t kCopyPixels = 4096;  // a multiple of PixelMajorPlanes' tile
        const int64_t copy_units = (g.num_pixels + kCopyPixels - 1) / kCopyPixels;
        ParallelFor(pool, g.num_batch * copy_units, WorkOf(g, Block::kTaps), [&](int64_t unit) {
          const int64_t n = unit / copy_units;
          const int64_t begin = (unit % copy_units) * kCopyPixels;
          PixelMajorPlanes(values + n * sample_values, g.channels, g.num_pixels, begin,
                           std::min(g.num_pixels, begin + kCopyPixels), pixels + n * sample_pixels);
        });
        ParallelFor(pool, g.num_batch * units_per_sample, WorkOf(g, Block::kTaps), [&](int64_t unit) {
          const int64_t n = unit / units_per_sample;
          const int64_t begin = (unit % units_per_sample) * per_unit;
          InterpolatePixelMajor<Family, kNdim, kPad>(pixels + n * sample_pixels, grid + n * g.num_points * kNdim,
                                                     out + n * sample_out, begin,
                                                     std::min(g.num_points, begin + per_unit), g, axes);
        });
        return;
      }
      // Otherwise units are parts of samples, and a thread copies a sample to
      // its own scratch when it first runs a part of it (as the interleaved
      // forward above does).
      const int64_t call = ++InterleavedCalls();
      ParallelFor(pool, g.num_batch * units_per_sample, WorkOf(g, Block::kTaps), [&](int64_t unit) {
        const int64_t n = unit / units_per_sample;
        const int64_t begin = (unit % units_per_sample) * per_unit;
        const float* pixels = ThreadInterleavedSample().Holding(call, n, sample_pixels, [&](float* to) {
          PixelMajorSample(values + n * sample_values, g.channels, g.num_pixels, to);
        });
        InterpolatePixelMajor<Family, kNdim, kPad>(pixels, grid + n * g.num_points * kNdim, out + n * sample_out,
                                                   begin, std::min(g.num_points, begin + per_unit), g, axes);
      });
      return;
    }
  }
#endif
  ParallelFor(pool, g.num_batch * units_per_sample, WorkOf(g, Block::kTaps), [&](int64_t unit) {
    const int64_t n = unit / units_per_sample;
    const int64_t begin = (unit % units_per_sample) * per_unit;
    const int64_t end = std::min(g.num_points, begin + per_unit);
#ifdef JAXGRIDSAMPLE_AVX2
    if constexpr (std::is_same_v<T, float> && !std::is_same_v<Family, Cubic> && kNdim == 2) {
      if (g.channels == 1 && !g.channels_last && ThisProcessor().intel) {
        InterpolateOneChannel<Family, kPad>(values + n * sample_values, grid + n * g.num_points * 2,
                                            out + n * sample_out, begin, end, axes);
        return;
      }
    }
    if (DirectForward<Family>(g) && !IntelTableForward<Family, kNdim>(g)) {
      InterpolateDirect<T, Family, kNdim, kPad>(values + n * sample_values, grid + n * g.num_points * kNdim,
                                                out + n * sample_out, begin, end, g, axes);
      return;
    }
#endif
    Block& block = ThreadTable<Block>();
    for (int64_t first = begin; first < end; first += Block::kPoints) {
      const int count = static_cast<int>(std::min<int64_t>(Block::kPoints, end - first));
      FillTaps<T, Family, kNdim, kPad>(&block, grid + n * g.num_points * kNdim, first, count, axes, false);
      InterpolateBlock(block, values + n * sample_values, out + n * sample_out, first, g);
    }
  });
}

// The backward's grad_input is split into (sample, channel group) units, each
// of which scatter-adds its channels in point order. The grid gradient is
// either summed by the same units, one part per group, in the same sweep
// (fused: one tap computation instead of two, worth it from 8 taps on when
// there are enough units to share out), or by units of points over all
// channels (a second sweep, which keeps the value and gradient planes out of
// each other's cache). The groups depend on the shapes only, never on the
// number of threads, and partial grid gradients are summed in group order,
// so the results are the same on any machine. Where DirectBackward says so,
// BackwardDirect replaces the table; with the taps in registers, fusing is
// worth it at any tap count.
constexpr int64_t kTargetUnits = 4;

template <typename Family>
int64_t ChannelGroups(const Geometry& g) {
  // Upsampling with the pixel-major copy: one group, so that the float32
  // backward adds up grad_input on the copy (one read-modify-write per tap
  // and 8 channels instead of per channel), with samples as the units. Two
  // threads, backward alone: 2 x 32 x 64^2 -> 128^2 1.32-1.54 -> 0.62-0.64
  // ms, 2 x 8 x 64^2 -> 256^2 1.48-2.12 -> 0.61-0.64, 1 x 16 x 64^2 ->
  // 128^2 0.38 -> 0.29 (one thread against two). The groups depend on the
  // shape alone, so every build and thread count adds the same sums.
  if (Family::kHasSlope && PixelMajorForward<Family>(g) && Upsampling(g)) return 1;
  const int64_t channels = std::max<int64_t>(1, g.channels);
  const int64_t wanted = std::clamp<int64_t>((kTargetUnits + g.num_batch - 1) / std::max<int64_t>(1, g.num_batch), 1,
                                             channels);
  const int64_t per_group = (channels + wanted - 1) / wanted;
  return (channels + per_group - 1) / per_group;  // no empty group
}

template <typename T, typename Family, int kNdim, Padding kPad>
void Backward(ffi::ThreadPool& pool, const T* values, const T* grid, const T* grad_out, T* grad_values,
              T* grad_grid, const Geometry& g, const Axis* axes) {
  using Block = TableFor<T, Family, kNdim>;
  const int64_t sample_values = g.channels * g.num_pixels;
  const int64_t sample_out = g.channels * g.num_points;
  const int64_t sample_grid = g.num_points * kNdim;
  const int64_t grid_size = g.num_batch * sample_grid;
  const int64_t groups = ChannelGroups<Family>(g);
  const int64_t per_group = (std::max<int64_t>(1, g.channels) + groups - 1) / groups;
  const int64_t channel_units = g.num_batch * groups;
#ifdef JAXGRIDSAMPLE_AVX2
  if constexpr (std::is_same_v<T, float>) {
    // One channel group (ChannelGroups), so the grid gradient's sum is the
    // same. Nearest has no grid gradient, and its grad_input is the same sums
    // in either form, so it copies with several groups too where the samples
    // alone give every thread a unit (two threads, forward+backward:
    // 2 x 16 x 24^3 1.08 -> 0.83 ms, PyTorch's kernel 1.26; 2 x 8 x 128^2 ->
    // 256^2 1.53 -> 1.24, torch 1.44).
    const bool sample_units = !Family::kHasSlope && g.num_batch >= pool.num_threads();
    if ((groups == 1 || sample_units) && PixelMajorForward<Family>(g)) {
      const int64_t stride = PixelMajorStride(g.channels);
      const int64_t sample_pixels = (g.num_pixels + 1) * stride;
      ParallelFor(pool, g.num_batch, WorkOf(g, Block::kTaps), [&](int64_t n) {
        InterleavedSample& sample = ThreadInterleavedSample();
        sample.pixels.resize(std::max<size_t>(sample.pixels.size(), sample_pixels));
        sample.gradients.resize(std::max<size_t>(sample.gradients.size(), sample_pixels));
        sample.call = -1;
        if (Family::kHasSlope) {
          PixelMajorSample(values + n * sample_values, g.channels, g.num_pixels, sample.pixels.data());
        }
        std::fill_n(sample.gradients.data(), sample_pixels, 0.0f);
        BackwardPixelMajor<Family, kNdim, kPad>(sample.pixels.data(), grid + n * sample_grid, grad_out + n * sample_out,
                                                sample.gradients.data(), grad_grid + n * sample_grid, g, axes);
        PlanesFromPixelMajor(sample.gradients.data(), g.channels, g.num_pixels, grad_values + n * sample_values);
      });
      if (!Family::kHasSlope) std::fill(grad_grid, grad_grid + grid_size, T(0));
      return;
    }
  }
  const bool direct = DirectBackward<T>(g, Block::kTaps);
#else
  const bool direct = false;
#endif
  // One group: fused or not, the grid gradient is the same sum in the same
  // order, so the choice may also count threads.
  const bool enough_units = channel_units >= kTargetUnits || (groups == 1 && channel_units >= pool.num_threads());
  const bool fused = Family::kHasSlope && (Block::kTaps >= 8 || direct) && enough_units;
  // Fused with several groups: each group writes its part of grad_grid here first.
  std::unique_ptr<T[]> partial(fused && groups > 1 ? new T[groups * grid_size] : nullptr);
  // Not fused: units of points for the grid gradient, after the channel units.
  const int64_t per_unit = PointsPerUnit(g, kTargetUnits, Block::kPoints);
  const int64_t units_per_sample = (g.num_points + per_unit - 1) / per_unit;
  const int64_t grid_units = Family::kHasSlope && !fused ? g.num_batch * units_per_sample : 0;

  ParallelFor(pool, channel_units + grid_units, WorkOf(g, Block::kTaps), [&](int64_t unit) {
    Block* block = &ThreadTable<Block>();
    alignas(32) T total[kNdim][Block::kPoints];
    if (unit >= channel_units) {
      unit -= channel_units;
      const int64_t n = unit / units_per_sample;
      const int64_t begin = (unit % units_per_sample) * per_unit;
      const int64_t end = std::min(g.num_points, begin + per_unit);
      for (int64_t first = begin; first < end; first += Block::kPoints) {
        const int count = static_cast<int>(std::min<int64_t>(Block::kPoints, end - first));
        FillTaps<T, Family, kNdim, kPad>(block, grid + n * sample_grid, first, count, axes, true);
        GradGridBlock(*block, values + n * sample_values, grad_out + n * sample_out, grad_grid + n * sample_grid,
                      first, g);
      }
      return;
    }
    const int64_t n = unit / groups;
    const int64_t group = unit % groups;
    const int64_t c_begin = group * per_group;
    const int64_t c_end = std::min(g.channels, c_begin + per_group);
    T* sample_grad = grad_values + n * sample_values;
    if (!g.channels_last) {
      std::fill(sample_grad + c_begin * g.num_pixels, sample_grad + c_end * g.num_pixels, T(0));
    } else {
      for (int64_t pixel = 0; pixel < g.num_pixels; ++pixel) {
        std::fill(sample_grad + pixel * g.channels + c_begin, sample_grad + pixel * g.channels + c_end, T(0));
      }
    }
    T* grid_out = groups == 1 ? grad_grid + n * sample_grid : partial.get() + group * grid_size + n * sample_grid;
#ifdef JAXGRIDSAMPLE_AVX2
    if (direct) {
      BackwardDirect<T, Family, kNdim, kPad>(values + n * sample_values, grid + n * sample_grid,
                                             grad_out + n * sample_out, sample_grad, grid_out, g, axes, c_begin,
                                             c_end, fused);
      return;
    }
#endif
    for (int64_t first = 0; first < g.num_points; first += Block::kPoints) {
      const int count = static_cast<int>(std::min<int64_t>(Block::kPoints, g.num_points - first));
      FillTaps<T, Family, kNdim, kPad>(block, grid + n * sample_grid, first, count, axes, fused);
      if (fused) {
        for (int s = 0; s < kNdim; ++s) std::fill(total[s], total[s] + count, T(0));
      }
      BackwardBlock(*block, values + n * sample_values, grad_out + n * sample_out, sample_grad, first, g, c_begin,
                    c_end, fused, total);
      if (fused) StoreGridGradient<T, kNdim, Block::kPoints>(total, count, grid_out + first * kNdim);
    }
  });

  if (!Family::kHasSlope) {
    std::fill(grad_grid, grad_grid + grid_size, T(0));
  } else if (partial) {
    const int64_t chunk = 1 << 14;
    ParallelFor(pool, (grid_size + chunk - 1) / chunk, grid_size * groups, [&](int64_t unit) {
      const int64_t end = std::min(grid_size, (unit + 1) * chunk);
      for (int64_t i = unit * chunk; i < end; ++i) {
        T sum = partial[i];
        for (int64_t group = 1; group < groups; ++group) sum += partial[group * grid_size + i];
        grad_grid[i] = sum;
      }
    });
  }
}

// ---------------------------------------------------------------------------
// FFI handlers.
// ---------------------------------------------------------------------------

// Reads the shapes of values (..., C, *spatial) or (..., *spatial, C) and grid
// (..., P, ndim); leading axes (a batch, and any that vmap adds) are folded.
ffi::Error Describe(const ffi::AnyBuffer& values, const ffi::AnyBuffer& grid, bool channels_last,
                    bool align_corners, Geometry* g, Axis* axes, int* ndim) {
  const auto v = values.dimensions();
  const auto q = grid.dimensions();
  if (q.size() < 2) return ffi::Error::InvalidArgument("grid must be (..., P, ndim)");
  *ndim = static_cast<int>(q[q.size() - 1]);
  if (*ndim != 2 && *ndim != 3) return ffi::Error::InvalidArgument("grid's last axis must be 2 or 3");
  const size_t lead = q.size() - 2;
  if (v.size() != lead + 1 + *ndim) return ffi::Error::InvalidArgument("values and grid ranks disagree");
  g->num_batch = 1;
  for (size_t i = 0; i < lead; ++i) {
    if (v[i] != q[i]) return ffi::Error::InvalidArgument("values and grid batch axes disagree");
    g->num_batch *= v[i];
  }
  g->channels_last = channels_last;
  g->channels = channels_last ? v[v.size() - 1] : v[lead];
  g->num_points = q[lead];
  g->num_pixels = 1;
  for (int a = 0; a < *ndim; ++a) {
    const int64_t size = v[lead + (channels_last ? 0 : 1) + a];
    axes[a] = Axis{size, align_corners};
    g->num_pixels *= size;
  }
  // Offsets are int32, and sums of adjacent taps' offsets reach about twice this.
  if (g->num_pixels >= (int64_t{1} << 30)) {
    return ffi::Error::InvalidArgument("2^30 or more pixels per channel: use the XLA implementation");
  }
  return ffi::Error::Success();
}

template <typename T, int kNdim, Padding kPad, typename Call>
ffi::Error ForFamily(int32_t mode, const Call& call) {
  switch (static_cast<Mode>(mode)) {
    case Mode::kBilinear:
      call.template operator()<T, Linear, kNdim, kPad>();
      return ffi::Error::Success();
    case Mode::kNearest:
      call.template operator()<T, Nearest, kNdim, kPad>();
      return ffi::Error::Success();
    case Mode::kBicubic:
      call.template operator()<T, Cubic, kNdim, kPad>();
      return ffi::Error::Success();
  }
  return ffi::Error::InvalidArgument("unknown interpolation mode");
}

template <typename T, int kNdim, typename Call>
ffi::Error ForPadding(int32_t mode, int32_t padding, const Call& call) {
  switch (static_cast<Padding>(padding)) {
    case Padding::kZeros:
      return ForFamily<T, kNdim, Padding::kZeros>(mode, call);
    case Padding::kBorder:
      return ForFamily<T, kNdim, Padding::kBorder>(mode, call);
    case Padding::kReflection:
      return ForFamily<T, kNdim, Padding::kReflection>(mode, call);
  }
  return ffi::Error::InvalidArgument("unknown padding mode");
}

// Calls call.operator()<T, Family, kNdim, kPad>() for the dtype, rank, padding and mode.
template <typename Call>
ffi::Error Dispatch(ffi::DataType dtype, int ndim, int32_t mode, int32_t padding, const Call& call) {
  if (dtype == ffi::DataType::F32) {
    return ndim == 2 ? ForPadding<float, 2>(mode, padding, call) : ForPadding<float, 3>(mode, padding, call);
  }
  if (dtype == ffi::DataType::F64) {
    return ndim == 2 ? ForPadding<double, 2>(mode, padding, call) : ForPadding<double, 3>(mode, padding, call);
  }
  return ffi::Error::InvalidArgument("values must be float32 or float64");
}

struct ForwardCall {
  ffi::ThreadPool& pool;
  void *values, *grid, *out;
  const Geometry& g;
  const Axis* axes;
  template <typename T, typename Family, int kNdim, Padding kPad>
  void operator()() const {
    Forward<T, Family, kNdim, kPad>(pool, static_cast<const T*>(values), static_cast<const T*>(grid),
                                    static_cast<T*>(out), g, axes);
  }
};

struct BackwardCall {
  ffi::ThreadPool& pool;
  void *values, *grid, *grad_out, *grad_values, *grad_grid;
  const Geometry& g;
  const Axis* axes;
  template <typename T, typename Family, int kNdim, Padding kPad>
  void operator()() const {
    Backward<T, Family, kNdim, kPad>(pool, static_cast<const T*>(values), static_cast<const T*>(grid),
                                     static_cast<const T*>(grad_out), static_cast<T*>(grad_values),
                                     static_cast<T*>(grad_grid), g, axes);
  }
};

ffi::Error ForwardImpl(ffi::ThreadPool pool, ffi::AnyBuffer values, ffi::AnyBuffer grid,
                       ffi::Result<ffi::AnyBuffer> out, int32_t mode, int32_t padding, bool align_corners,
                       bool channels_last) {
  Geometry g;
  Axis axes[3];
  int ndim;
  if (auto error = Describe(values, grid, channels_last, align_corners, &g, axes, &ndim); error.failure()) {
    return error;
  }
  if (values.element_type() != grid.element_type() || out->element_type() != values.element_type()) {
    return ffi::Error::InvalidArgument("values, grid and output must have one dtype");
  }
  return Dispatch(values.element_type(), ndim, mode, padding,
                  ForwardCall{pool, values.untyped_data(), grid.untyped_data(), out->untyped_data(), g, axes});
}

ffi::Error BackwardImpl(ffi::ThreadPool pool, ffi::AnyBuffer values, ffi::AnyBuffer grid, ffi::AnyBuffer grad_out,
                        ffi::Result<ffi::AnyBuffer> grad_values, ffi::Result<ffi::AnyBuffer> grad_grid, int32_t mode,
                        int32_t padding, bool align_corners, bool channels_last) {
  Geometry g;
  Axis axes[3];
  int ndim;
  if (auto error = Describe(values, grid, channels_last, align_corners, &g, axes, &ndim); error.failure()) {
    return error;
  }
  const auto dtype = values.element_type();
  if (grid.element_type() != dtype || grad_out.element_type() != dtype || grad_values->element_type() != dtype ||
      grad_grid->element_type() != dtype) {
    return ffi::Error::InvalidArgument("all operands must have one dtype");
  }
  return Dispatch(dtype, ndim, mode, padding,
                  BackwardCall{pool, values.untyped_data(), grid.untyped_data(), grad_out.untyped_data(),
                               grad_values->untyped_data(), grad_grid->untyped_data(), g, axes});
}

}  // namespace
}  // namespace jaxgridsample

XLA_FFI_DEFINE_HANDLER_SYMBOL(JAXGRIDSAMPLE_NAME(JaxGridSampleForward, JAXGRIDSAMPLE_ISA), jaxgridsample::ForwardImpl,
                              ffi::Ffi::Bind()
                                  .Ctx<ffi::ThreadPool>()
                                  .Arg<ffi::AnyBuffer>()
                                  .Arg<ffi::AnyBuffer>()
                                  .Ret<ffi::AnyBuffer>()
                                  .Attr<int32_t>("mode")
                                  .Attr<int32_t>("padding")
                                  .Attr<bool>("align_corners")
                                  .Attr<bool>("channels_last"));

XLA_FFI_DEFINE_HANDLER_SYMBOL(JAXGRIDSAMPLE_NAME(JaxGridSampleBackward, JAXGRIDSAMPLE_ISA), jaxgridsample::BackwardImpl,
                              ffi::Ffi::Bind()
                                  .Ctx<ffi::ThreadPool>()
                                  .Arg<ffi::AnyBuffer>()
                                  .Arg<ffi::AnyBuffer>()
                                  .Arg<ffi::AnyBuffer>()
                                  .Ret<ffi::AnyBuffer>()
                                  .Ret<ffi::AnyBuffer>()
                                  .Attr<int32_t>("mode")
                                  .Attr<int32_t>("padding")
                                  .Attr<bool>("align_corners")
                                  .Attr<bool>("channels_last"));

#if defined(__x86_64__) && !defined(JAXGRIDSAMPLE_AVX2)
// Whether this processor runs the avx2 build (exported by the generic one).
extern "C" int JaxGridSampleSupportsAvx2() {
  __builtin_cpu_init();
  return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
}
#endif
