/* adamw.c: the AdamW optimiser step (PyTorch torch.optim.AdamW semantics). */
#include <math.h>
#include "kernels/kernels.h"

/* params, grads, m, v (n), step t >= 1:
 * p -= lr*wd*p (decoupled decay, on the pre-update p);
 * m = b1 m + (1-b1) g;  v = b2 v + (1-b2) g^2;
 * p -= lr * (m / (1-b1^t)) / (sqrt(v / (1-b2^t)) + eps) */
void adamw_update(float *params, const float *grads, float *m, float *v, size_t n,
                  float lr, float beta1, float beta2, float eps, float weight_decay, int t)
{
    /* bias corrections in double: 1 - b2^t is tiny for small t and b2 near 1 */
    double bc1 = 1.0 - pow((double)beta1, (double)t);
    double bc2 = 1.0 - pow((double)beta2, (double)t);
    float step = (float)(lr / bc1);
    float rbc2 = (float)(1.0 / sqrt(bc2));
    float decay = 1.0f - lr * weight_decay;
    #pragma omp parallel for schedule(static) if (n >= (1u << 15))
    for (size_t i = 0; i < n; i++) {
        float g = grads[i];
        float mi = beta1 * m[i] + (1.0f - beta1) * g;
        float vi = beta2 * v[i] + (1.0f - beta2) * g * g;
        m[i] = mi;
        v[i] = vi;
        params[i] = params[i] * decay - step * mi / (sqrtf(vi) * rbc2 + eps);
    }
}
