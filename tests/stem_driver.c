/* stem_driver.c: one Porter stem (src/train/metrics.c, NLTK's rules) per
 * input word, for tests/check_metrics.sh. */
#include "train/metrics.h"

#include <stdio.h>
#include <string.h>

int main(void)
{
    char w[4096 + 8];
    while (scanf("%4096s", w) == 1) {
        metric_porter_stem(w);
        puts(w);
    }
    return 0;
}
