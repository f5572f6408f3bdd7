/* svd.c: the thin SVD of a dense matrix, in double, through LAPACK's dgesvd
 * (OpenBLAS ships LAPACK; no LAPACKE header is needed for one routine). */
#include "kernels/kernels.h"

#include <stdlib.h>

/* Fortran dgesvd with gfortran's hidden lengths of the two character arguments */
extern void dgesvd_(const char *jobu, const char *jobvt, const int *m, const int *n, double *a, const int *lda,
                    double *s, double *u, const int *ldu, double *vt, const int *ldvt, double *work,
                    const int *lwork, int *info, size_t ljobu, size_t ljobvt);

int svd_thin_f64(const double *M, int m, int n, double *U, double *S, double *VT)
{
    int k = m < n ? m : n, info = 0, lwork = -1;
    double *A = malloc((size_t)m * n * sizeof *A), *Uc = malloc((size_t)m * k * sizeof *Uc),
           *Vc = malloc((size_t)k * n * sizeof *Vc), q = 0;
    int rc = -1;
    if (!A || !Uc || !Vc) goto out;
    /* row-major M to LAPACK's column-major */
    for (int i = 0; i < m; i++)
        for (int j = 0; j < n; j++) A[i + (size_t)j * m] = M[(size_t)i * n + j];
    dgesvd_("S", "S", &m, &n, A, &m, S, Uc, &m, Vc, &k, &q, &lwork, &info, 1, 1);
    if (info) goto out;
    lwork = (int)q;
    double *work = malloc((size_t)(lwork > 1 ? lwork : 1) * sizeof *work);
    if (!work) goto out;
    dgesvd_("S", "S", &m, &n, A, &m, S, Uc, &m, Vc, &k, work, &lwork, &info, 1, 1);
    free(work);
    if (info) goto out;
    for (int i = 0; i < m; i++)
        for (int c = 0; c < k; c++) U[(size_t)i * k + c] = Uc[i + (size_t)c * m];
    for (int c = 0; c < k; c++)
        for (int j = 0; j < n; j++) VT[(size_t)c * n + j] = Vc[c + (size_t)j * k];
    rc = 0;
out:
    free(A); free(Uc); free(Vc);
    return rc;
}
