// Memberwise equality of op params, which says two launches are the same (a backend that
// replays recorded steps compares them). Defaulted comparison is C++20; CUDA sources built
// as C++17 (CMake before 3.26 has no C++20 flag for nvcc) never compare params and see
// the structs without the operator, which adds no data and changes no layout.
#ifndef LSERVE_KERNELS_PARAMS_EQUALITY_H_
#define LSERVE_KERNELS_PARAMS_EQUALITY_H_

#if __cplusplus >= 202002L
#define LSERVE_PARAMS_EQUALITY(Type) bool operator==(const Type&) const = default
#else
#define LSERVE_PARAMS_EQUALITY(Type) static_assert(true, "")
#endif

#endif  // LSERVE_KERNELS_PARAMS_EQUALITY_H_
