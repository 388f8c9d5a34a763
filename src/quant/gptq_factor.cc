// H = R R^T (R upper, Cholesky from the last column backwards), then U = R^-1: since
// H^-1 = R^-T R^-1 = U^T U and a Cholesky factor with a positive diagonal is unique, U is the
// factor GPTQ's usual three steps (Cholesky of H, its inverse, Cholesky of that) give, for about
// a quarter of their work: two passes of m^3/6 multiply-adds, every inner loop a contiguous axpy
// (the old column-strided triangular inverse dominated the C++ job on wide layers).
#include "quant/gptq_factor.h"

#include <cmath>

namespace arrowquant::quant {

std::vector<float> UpperFactorOfInverse(std::vector<double>& a, uint64_t m) {
  // 1. R^T overwrites the lower triangle of `a`: row j holds column j of R.
  std::vector<double> col(m);
  for (uint64_t j = m; j-- > 0;) {
    double* rj = a.data() + j * m;
    if (!(rj[j] > 0)) return {};
    const double d = std::sqrt(rj[j]);
    rj[j] = d;
    for (uint64_t i = 0; i < j; ++i) col[i] = rj[i] /= d;
    // The leading block's lower triangle loses column j's outer product.
    for (uint64_t i = 0; i < j; ++i) {
      double* ri = a.data() + i * m;
      const double ci = col[i];
      for (uint64_t l = 0; l <= i; ++l) ri[l] -= ci * col[l];
    }
  }
  // 2. U = R^-1 row by row from the bottom: U[i][.] = -(1/R[i][i]) sum_{k>i} R[i][k] U[k][.].
  std::vector<double> u(m * m, 0.0), r(m);
  for (uint64_t i = m; i-- > 0;) {
    double* ui = u.data() + i * m;
    for (uint64_t k = i + 1; k < m; ++k) r[k] = a[k * m + i];
    for (uint64_t k = i + 1; k < m; ++k) {
      const double rik = r[k];
      const double* uk = u.data() + k * m;
      for (uint64_t c = k; c < m; ++c) ui[c] += rik * uk[c];
    }
    const double inv = 1.0 / a[i * m + i];
    for (uint64_t c = i + 1; c < m; ++c) ui[c] *= -inv;
    ui[i] = inv;
  }
  return std::vector<float>(u.begin(), u.end());
}

}  // namespace arrowquant::quant
