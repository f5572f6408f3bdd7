/* error.c: status names and the error-recording helper. */
#include "core/core.h"

#include <string.h>

const char *peftc_status_name(peftc_status s)
{
    switch (s) {
    case PEFTC_OK: return "ok";
    case PEFTC_ERR_IO: return "i/o error";
    case PEFTC_ERR_FORMAT: return "malformed file";
    case PEFTC_ERR_UNSUPPORTED: return "unsupported";
    case PEFTC_ERR_INPUT: return "invalid input";
    case PEFTC_ERR_NOMEM: return "out of memory";
    case PEFTC_ERR_NUMERIC: return "numerical error";
    }
    return "unknown status";
}

peftc_status peftc_fail(peftc_error *err, peftc_status code, const char *fmt, ...)
{
    if (err) {
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(err->msg, sizeof err->msg, fmt, ap);
        va_end(ap);
        err->code = code;
    }
    return code;
}
