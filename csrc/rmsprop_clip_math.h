// The elementwise update of wgan_ext::rmsprop_clip_, for the CPU and the CUDA kernel alike.
//
// It repeats, rounding for rounding, what torch.optim.RMSprop's single-tensor path computes
// with ATen's CPU kernels: one rounding to the tensor's dtype at the end of every ATen op, the
// arithmetic inside an op in opmath_t (float for Half/BFloat16), and a fused multiply-add
// exactly where ATen's AVX2/AVX-512 kernels have one (their vector code calls fmadd; GCC
// contracts their scalar tails the same way), measured op by op:
//
//   grad.add(param, alpha=wd)          fma(wd', param, grad)        (' : rounded to the dtype)
//   sq.mul_(alpha)                     sq * alpha
//   sq.addcmul_(g, g, value=1-alpha)   fma((1-alpha) * g, g, sq)
//   ga.lerp_(g, w=1-alpha)             fma(w, g - ga, ga)  if |w| < 0.5, else fma(w - 1, g - ga, g)
//   sq.addcmul(ga, ga, value=-1)       fma(-ga, ga, sq)
//   sqrt                               float/double on the CPU: MKL's vmsSqrt/vmdSqrt (HA mode),
//                                      which is not always correctly rounded; else correctly rounded
//   add_(eps')                         correctly rounded
//   buf.mul_(m).addcdiv_(g, avg)       buf * m, then buf + g / avg
//   param.add_(buf, alpha=-lr)         fma(-lr', buf, param)
//   param.addcdiv_(g, avg, value=-lr)  param + (-lr * g) / avg
//
// kFma = false is ATen's DEFAULT CPU capability (no FMA; ATEN_CPU_CAPABILITY=default): every
// a*b+c is two roundings and a 16-bit add with alpha rounds the product to the dtype first.
// kFusedAlpha = false is that add in the scalar tail of ATen's vectorised Half/BFloat16 loop
// (c10::Half * c10::Half rounds), even where the vector part fuses it.
// On the host this header must be compiled without FP contraction (setup.py builds the CPU
// library with -ffp-contract=off, and the kernel's file asks for it too); on the device the _rn
// intrinsics are never contracted.
#pragma once

#include <ATen/OpMathType.h>
#include <c10/macros/Macros.h>
#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>
#include <c10/core/Scalar.h>

#include <cmath>
#include <cstdint>
#include <cstring>
#include <type_traits>

namespace wgan_ext::rmsprop {

// Scalars of one call for one dtype, as the single-tensor path hands them to each ATen op.
template <typename opmath_t>
struct Scalars {
  opmath_t alpha;         // square_avg.mul_(alpha)
  opmath_t lerp_w;        // 1 - alpha: addcmul_'s value and lerp_'s weight
  opmath_t weight_decay;  // grad.add(param, alpha=wd): rounded to the dtype
  opmath_t eps;           // avg.add_(eps): rounded to the dtype
  opmath_t momentum;      // buf.mul_(momentum)
  opmath_t neg_lr;        // param.addcdiv_(.., value=-lr)
  opmath_t neg_lr_alpha;  // param.add_(buf, alpha=-lr): rounded to the dtype
  opmath_t lo, hi;        // clamp_ bounds, rounded to the dtype
  opmath_t grad_sign;     // -1 to maximize: -g exactly, without a branch the vectoriser refuses
  bool has_weight_decay;
};

// The call's scalars for dtype T, converted on the host with ATen's checked conversions (an
// out-of-range value raises before anything is written), only those this call's ATen ops would
// convert. `lr` is ignored (left 0) when the kernel reads the learning rate from a device tensor.
template <typename T>
Scalars<at::opmath_type<T>> make_scalars(double alpha, double eps, double weight_decay,
    double momentum, bool maximize, double lo, double hi, double lr, bool lr_on_device) {
  using op_t = at::opmath_type<T>;
  auto as_op = [](double v) { return c10::Scalar(v).to<op_t>(); };
  auto as_t = [](double v) { return static_cast<op_t>(c10::Scalar(v).to<T>()); };
  Scalars<op_t> s{};
  s.alpha = as_op(alpha);
  s.lerp_w = as_op(1 - alpha);
  s.has_weight_decay = weight_decay != 0;
  s.weight_decay = s.has_weight_decay ? as_t(weight_decay) : op_t(0);
  s.eps = as_t(eps);
  s.momentum = as_op(momentum);
  s.neg_lr = lr_on_device ? op_t(0) : as_op(-lr);
  s.neg_lr_alpha = lr_on_device || momentum <= 0 ? op_t(0) : as_t(-lr);
  s.lo = as_t(lo);
  s.hi = as_t(hi);
  s.grad_sign = maximize ? op_t(-1) : op_t(1);
  return s;
}

#if defined(__CUDA_ARCH__)
__device__ __forceinline__ float mul(float a, float b) { return __fmul_rn(a, b); }
__device__ __forceinline__ float add(float a, float b) { return __fadd_rn(a, b); }
__device__ __forceinline__ float sub(float a, float b) { return __fsub_rn(a, b); }
__device__ __forceinline__ float div(float a, float b) { return __fdiv_rn(a, b); }
__device__ __forceinline__ float fma3(float a, float b, float c) { return __fmaf_rn(a, b, c); }
__device__ __forceinline__ float sqrt_(float a) { return __fsqrt_rn(a); }
__device__ __forceinline__ double mul(double a, double b) { return __dmul_rn(a, b); }
__device__ __forceinline__ double add(double a, double b) { return __dadd_rn(a, b); }
__device__ __forceinline__ double sub(double a, double b) { return __dsub_rn(a, b); }
__device__ __forceinline__ double div(double a, double b) { return __ddiv_rn(a, b); }
__device__ __forceinline__ double fma3(double a, double b, double c) { return __fma_rn(a, b, c); }
__device__ __forceinline__ double sqrt_(double a) { return __dsqrt_rn(a); }
#define WGAN_EXT_MATH __device__ __forceinline__
#else
template <typename F> inline F mul(F a, F b) { return a * b; }
template <typename F> inline F add(F a, F b) { return a + b; }
template <typename F> inline F sub(F a, F b) { return a - b; }
template <typename F> inline F div(F a, F b) { return a / b; }
template <typename F> inline F fma3(F a, F b, F c) { return std::fma(a, b, c); }
template <typename F> inline F sqrt_(F a) { return std::sqrt(a); }
#define WGAN_EXT_MATH inline __attribute__((always_inline))
#endif

// T <-> opmath_t. On the host, Half and BFloat16 convert with inline code that the vectoriser
// handles (c10's conversions are called out of line, element by element): the same values,
// rounded to nearest even, NaN payloads aside.
template <typename T>
WGAN_EXT_MATH at::opmath_type<T> up(T x) {
  return static_cast<at::opmath_type<T>>(x);
}
template <typename T>
WGAN_EXT_MATH T down(at::opmath_type<T> x) {
  return static_cast<T>(x);
}
#if !defined(__CUDA_ARCH__) && !defined(__CUDACC__)
template <>
WGAN_EXT_MATH float up<at::BFloat16>(at::BFloat16 x) {
  const uint32_t u = static_cast<uint32_t>(x.x) << 16;
  float f;
  std::memcpy(&f, &u, sizeof(f));
  return f;
}
template <>
WGAN_EXT_MATH at::BFloat16 down<at::BFloat16>(float f) {  // c10::detail::round_to_nearest_even
  uint32_t u;
  std::memcpy(&u, &f, sizeof(u));
  const uint16_t bits = f != f ? uint16_t{0x7fc0} : static_cast<uint16_t>((u + 0x7fffu + ((u >> 16) & 1u)) >> 16);
  return at::BFloat16(bits, at::BFloat16::from_bits());
}
WGAN_EXT_MATH float float_of_bits(uint32_t u) {
  float f;
  std::memcpy(&f, &u, sizeof(f));
  return f;
}
WGAN_EXT_MATH uint32_t bits_of_float(float f) {
  uint32_t u;
  std::memcpy(&u, &f, sizeof(u));
  return u;
}
// c10::detail::fp16_ieee_to_fp32_value / fp16_ieee_from_fp32_value (c10's conversions on a
// CPU build without F16C), written out so that they inline and vectorise.
template <>
WGAN_EXT_MATH float up<at::Half>(at::Half x) {
  const uint32_t w = static_cast<uint32_t>(x.x) << 16;
  const uint32_t sign = w & 0x80000000u;
  const uint32_t two_w = w + w;
  const float normalized = float_of_bits((two_w >> 4) + (0xe0u << 23)) * float_of_bits(15u << 23);
  const float denormalized = float_of_bits((two_w >> 17) | (126u << 23)) - 0.5f;
  return float_of_bits(sign | (two_w < (1u << 27) ? bits_of_float(denormalized)
                                                  : bits_of_float(normalized)));
}
template <>
WGAN_EXT_MATH at::Half down<at::Half>(float f) {
  float base = (std::fabs(f) * float_of_bits(239u << 23)) * float_of_bits(17u << 23);
  const uint32_t w = bits_of_float(f);
  const uint32_t shl1_w = w + w;
  const uint32_t sign = w & 0x80000000u;
  uint32_t bias = shl1_w & 0xff000000u;
  bias = bias < 0x71000000u ? 0x71000000u : bias;
  base = float_of_bits((bias >> 1) + 0x07800000u) + base;
  const uint32_t bits = bits_of_float(base);
  const uint32_t nonsign = ((bits >> 13) & 0x7c00u) + (bits & 0x0fffu);
  return at::Half(static_cast<uint16_t>((sign >> 16) | (shl1_w > 0xff000000u ? 0x7e00u : nonsign)),
                  at::Half::from_bits());
}
// float(Half(x)) in float arithmetic (checked against c10 for all 2^32 floats): adding m, a
// power of two 13 binades above x's (or 2^-1 below half's normal range), rounds x to half's
// spacing, to nearest even; beyond 65520 it is infinity.
WGAN_EXT_MATH float rnd_half(float x) {
  const float ax = std::fabs(x);
  uint32_t e = bits_of_float(ax) & 0x7f800000u;
  e = e < 0x38800000u ? 0x38800000u : e;
  const float m = float_of_bits(e + (13u << 23));
  float r = (ax + m) - m;
  r = ax >= 65520.0f ? float_of_bits(0x7f800000u) : r;
  return std::copysign(r, x);
}
#endif

// x rounded to T, back in opmath_t: the end of an ATen op on a T tensor.
template <typename T>
WGAN_EXT_MATH at::opmath_type<T> rnd(at::opmath_type<T> x) {
  if constexpr (std::is_same_v<T, at::opmath_type<T>>) {
    return x;
#if !defined(__CUDA_ARCH__) && !defined(__CUDACC__)
  } else if constexpr (std::is_same_v<T, at::Half>) {
    return rnd_half(x);
#endif
  } else {
    return up<T>(down<T>(x));
  }
}

// a + alpha * b as ATen's add with alpha (alpha already rounded to T).
template <typename T, bool kFma>
WGAN_EXT_MATH at::opmath_type<T> add_alpha(at::opmath_type<T> a, at::opmath_type<T> b,
                                           at::opmath_type<T> alpha) {
  return kFma ? rnd<T>(fma3(alpha, b, a)) : rnd<T>(add(a, rnd<T>(mul(alpha, b))));
}

// One element, in two halves around the square root (the CPU kernel takes ATen's own square
// root for float/double in between). front: the gradient RMSprop uses (returned in g), the new
// square_avg (and grad_avg), written in place; returns the argument of the square root.
template <typename T, bool kFma, bool kWd, bool kCentered, bool kFusedAlpha = kFma>
WGAN_EXT_MATH at::opmath_type<T> front(T p_in, T g_in, T& sq_io, T& ga_io,
                                       at::opmath_type<T>& g,
                                       const Scalars<at::opmath_type<T>>& s) {
  using op_t = at::opmath_type<T>;
  g = up<T>(g_in);
  g = mul(g, s.grad_sign);
  if constexpr (kWd) {
    g = add_alpha<T, kFusedAlpha>(g, up<T>(p_in), s.weight_decay);
  }
  op_t sq = rnd<T>(mul(up<T>(sq_io), s.alpha));
  const op_t wg = mul(s.lerp_w, g);
  sq = kFma ? rnd<T>(fma3(wg, g, sq)) : rnd<T>(add(sq, mul(wg, g)));
  sq_io = down<T>(sq);
  if constexpr (kCentered) {
    op_t ga = up<T>(ga_io);
    const op_t d = sub(g, ga);
    const bool small = (s.lerp_w < 0 ? -s.lerp_w : s.lerp_w) < op_t(0.5);
    const op_t coeff = small ? s.lerp_w : sub(s.lerp_w, op_t(1));
    const op_t base = small ? ga : g;
    ga = kFma ? rnd<T>(fma3(coeff, d, base)) : rnd<T>(add(base, mul(coeff, d)));
    ga_io = down<T>(ga);
    return kFma ? rnd<T>(fma3(-ga, ga, sq)) : rnd<T>(sub(sq, mul(ga, ga)));
  } else {
    return sq;
  }
}

// back: from the square root (rounded to T), the momentum buffer and the parameter, clamped
// to [lo, hi] (a NaN stays NaN).
template <typename T, bool kFma, bool kMomentum, bool kFusedAlpha = kFma>
WGAN_EXT_MATH void back(T& p_io, at::opmath_type<T> g, at::opmath_type<T> root, T& buf_io,
                        const Scalars<at::opmath_type<T>>& s) {
  using op_t = at::opmath_type<T>;
  const op_t avg = rnd<T>(add(root, s.eps));
  op_t p = up<T>(p_io);
  if constexpr (kMomentum) {
    op_t buf = rnd<T>(mul(up<T>(buf_io), s.momentum));
    buf = rnd<T>(add(buf, div(g, avg)));
    buf_io = down<T>(buf);
    p = add_alpha<T, kFusedAlpha>(p, buf, s.neg_lr_alpha);
  } else {
    p = rnd<T>(add(p, div(mul(s.neg_lr, g), avg)));
  }
  p = s.lo > p ? s.lo : p;
  p = s.hi < p ? s.hi : p;
  p_io = down<T>(p);
}

// Both halves with a correctly rounded square root (what ATen computes for Half/BFloat16 on
// the CPU, and for every dtype on CUDA).
template <typename T, bool kFma, bool kWd, bool kCentered, bool kMomentum, bool kFusedAlpha = kFma>
WGAN_EXT_MATH void update(T& p_io, T g_in, T& sq_io, T& ga_io, T& buf_io,
                          const Scalars<at::opmath_type<T>>& s) {
  at::opmath_type<T> g;
  const auto x = front<T, kFma, kWd, kCentered, kFusedAlpha>(p_io, g_in, sq_io, ga_io, g, s);
  back<T, kFma, kMomentum, kFusedAlpha>(p_io, g, rnd<T>(sqrt_(x)), buf_io, s);
}

// Clip only (parameters without a gradient): clamp_, a NaN keeps its exact bits.
template <typename T>
WGAN_EXT_MATH void clamp(T& x, const Scalars<at::opmath_type<T>>& s) {
  const auto v = up<T>(x);
  x = s.lo > v ? down<T>(s.lo) : (s.hi < v ? down<T>(s.hi) : x);
}

}  // namespace wgan_ext::rmsprop
