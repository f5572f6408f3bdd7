/* metrics.h: generation metrics (internal helpers behind peftc_score). */
#ifndef PEFTC_METRICS_H
#define PEFTC_METRICS_H

#include "core/core.h"

/* The final number of text, canonical (commas and trailing fractional zeros
 * dropped): the first number after the last "####" (GSM8K's answer line) if
 * there is one, else the last number. 0: none. */
int metric_final_number(const char *text, char *out, size_t cap);
/* NLTK's Porter stemmer (NLTK_EXTENSIONS mode) in place on a lowercase ASCII
 * word; the buffer needs room for 4 bytes more than the word. */
void metric_porter_stem(char *word);
/* "em-number,rouge,bleu" -> PEFTC_METRIC_* mask; 0 on an unknown name. */
int metric_parse(const char *names);   /* = peftc_metric_parse */

#endif
