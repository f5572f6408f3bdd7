/* file.c: small-file reading, path joining and atomic writes. */
#include "core/core.h"
#include "core/json_file.h"

#include <errno.h>
#include <fcntl.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

static const char *file_kind(mode_t m)
{
    return S_ISFIFO(m) ? "a FIFO" : S_ISCHR(m) ? "a character device" : S_ISBLK(m) ? "a block device" :
           S_ISDIR(m) ? "a directory" : S_ISSOCK(m) ? "a socket" : "not a file";
}

/* O_NONBLOCK: opening a FIFO for reading blocks until a writer appears (a
 * config.json that is a FIFO would hang the load forever); non-blocking, the
 * open returns at once and fstat says what it is. Regular files ignore the
 * flag, which is cleared anyway before reading. */
peftc_status peftc_open_regular(const char *path, int *fd_out, size_t *size, peftc_error *err)
{
    *fd_out = -1;
    int fd = open(path, O_RDONLY | O_NONBLOCK | O_CLOEXEC | O_NOCTTY);
    if (fd < 0) return peftc_fail(err, PEFTC_ERR_IO, "%s: cannot open: %s", path, strerror(errno));
    struct stat sb;
    if (fstat(fd, &sb) != 0) {
        int e = errno;
        close(fd);
        return peftc_fail(err, PEFTC_ERR_IO, "%s: cannot stat: %s", path, strerror(e));
    }
    if (!S_ISREG(sb.st_mode)) {
        close(fd);
        return peftc_fail(err, PEFTC_ERR_IO, "%s: not a regular file (%s); peftc reads model, adapter and data files only", path,
                          file_kind(sb.st_mode));
    }
    int fl = fcntl(fd, F_GETFL);
    if (fl >= 0) fcntl(fd, F_SETFL, fl & ~O_NONBLOCK);
    if (size) *size = (size_t)sb.st_size;
    *fd_out = fd;
    return PEFTC_OK;
}

FILE *peftc_fopen_regular(const char *path)
{
    int fd;
    if (peftc_open_regular(path, &fd, NULL, NULL)) return NULL;
    FILE *f = fdopen(fd, "rb");
    if (!f) close(fd);
    return f;
}

peftc_status peftc_read_file(const char *path, char **data, size_t *len, peftc_error *err)
{
    *data = NULL;
    if (len) *len = 0;
    int fd;
    size_t n;
    peftc_status rc = peftc_open_regular(path, &fd, &n, err);
    if (rc) return rc;
    FILE *f = fdopen(fd, "rb");
    if (!f) { close(fd); return peftc_fail(err, PEFTC_ERR_IO, "%s: cannot open: %s", path, strerror(errno)); }
    char *buf = malloc(n + 1);
    if (!buf) {
        fclose(f);
        return peftc_fail(err, PEFTC_ERR_NOMEM, "%s: cannot allocate %zu bytes", path, n + 1);
    }
    if (n && fread(buf, 1, n, f) != n) {
        free(buf);
        fclose(f);
        return peftc_fail(err, PEFTC_ERR_IO, "%s: short read", path);
    }
    fclose(f);
    buf[n] = 0;
    *data = buf;
    if (len) *len = n;
    return PEFTC_OK;
}

peftc_status peftc_path_join(char *out, size_t cap, const char *dir, const char *name, peftc_error *err)
{
    size_t dl = strlen(dir);
    int slash = dl > 0 && dir[dl - 1] != '/';
    int n = snprintf(out, cap, "%s%s%s", dir, slash ? "/" : "", name);
    if (n < 0 || (size_t)n >= cap)
        return peftc_fail(err, PEFTC_ERR_INPUT, "%s: path too long", dir);
    return PEFTC_OK;
}

int peftc_file_exists(const char *path)
{
    struct stat sb;
    return stat(path, &sb) == 0 && S_ISREG(sb.st_mode);
}

peftc_status peftc_write_file_atomic(const char *path, const void *data, size_t len, peftc_error *err)
{
    char tmp[4096];
    int n = snprintf(tmp, sizeof tmp, "%s.tmp", path);
    if (n < 0 || (size_t)n >= sizeof tmp)
        return peftc_fail(err, PEFTC_ERR_INPUT, "%s: path too long", path);
    int fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC, 0644);
    if (fd < 0) return peftc_fail(err, PEFTC_ERR_IO, "%s: cannot create: %s", tmp, strerror(errno));
    const char *p = data;
    size_t left = len;
    while (left) {
        ssize_t w = write(fd, p, left);
        if (w < 0) {
            if (errno == EINTR) continue;
            int e = errno;
            close(fd);
            unlink(tmp);
            /* say that the old file survived: after ENOSPC or EFBIG the user
             * wants to know the last checkpoint or adapter is still good */
            return peftc_fail(err, PEFTC_ERR_IO, "%s: write failed: %s (%s is left as it was)", tmp, strerror(e), path);
        }
        p += w;
        left -= (size_t)w;
    }
    if (fsync(fd) != 0 || close(fd) != 0) {
        int e = errno;
        unlink(tmp);
        return peftc_fail(err, PEFTC_ERR_IO, "%s: sync failed: %s (%s is left as it was)", tmp, strerror(e), path);
    }
    if (rename(tmp, path) != 0) {
        int e = errno;
        unlink(tmp);
        return peftc_fail(err, PEFTC_ERR_IO, "%s: rename failed: %s", path, strerror(e));
    }
    /* the rename itself is durable only once the directory is synced */
    char dir[4096];
    snprintf(dir, sizeof dir, "%s", path);
    char *slash = strrchr(dir, '/');
    if (slash) { if (slash == dir) slash[1] = 0; else *slash = 0; } else snprintf(dir, sizeof dir, ".");
    int dfd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (dfd >= 0) { fsync(dfd); close(dfd); }
    return PEFTC_OK;
}

void *peftc_alloc_aligned(size_t bytes)
{
    void *p = NULL;
    if (bytes == 0) bytes = 64;
    bytes = (bytes + 63) & ~(size_t)63;
    if (posix_memalign(&p, 64, bytes) != 0) return NULL;
    return p;
}

peftc_status peftc_mkdir_p(const char *dir, peftc_error *err)
{
    char buf[4096];
    int n = snprintf(buf, sizeof buf, "%s", dir);
    if (n <= 0 || (size_t)n >= sizeof buf) return peftc_fail(err, PEFTC_ERR_INPUT, "%s: path too long", dir);
    for (char *p = buf + 1; ; p++) {
        if (*p != '/' && *p) continue;
        char c = *p;
        *p = 0;
        struct stat sb;
        if (stat(buf, &sb) != 0) {
            if (mkdir(buf, 0755) != 0 && errno != EEXIST)
                return peftc_fail(err, PEFTC_ERR_IO, "%s: cannot create the directory: %s", buf, strerror(errno));
        } else if (!S_ISDIR(sb.st_mode)) {
            return peftc_fail(err, PEFTC_ERR_IO, "%s: exists and is not a directory", buf);
        }
        if (!c) break;
        *p = c;
    }
    return PEFTC_OK;
}

json_t *peftc_json_load_file(const char *path, size_t flags, json_error_t *je)
{
    peftc_error e = {0};
    int fd;
    if (peftc_open_regular(path, &fd, NULL, &e)) {
        if (je) {
            memset(je, 0, sizeof *je);
            const char *colon = strstr(e.msg, ": ");
            snprintf(je->text, sizeof je->text, "%.150s", colon ? colon + 2 : e.msg);
            snprintf(je->source, sizeof je->source, "%.70s", path);
        }
        return NULL;
    }
    FILE *f = fdopen(fd, "rb");
    if (!f) { close(fd); return NULL; }
    json_t *j = json_loadf(f, flags, je);
    fclose(f);
    return j;
}

peftc_status peftc_copy_present_files(const char *from, const char *to, const char *const *names, peftc_error *err)
{
    char src[4096], dst[4096];
    peftc_status rc;
    for (int i = 0; names[i]; i++) {
        if ((rc = peftc_path_join(src, sizeof src, from, names[i], err)) ||
            (rc = peftc_path_join(dst, sizeof dst, to, names[i], err)))
            return rc;
        if (!peftc_file_exists(src)) continue;
        char *data;
        size_t len;
        if ((rc = peftc_read_file(src, &data, &len, err))) return rc;
        rc = peftc_write_file_atomic(dst, data, len, err);
        free(data);
        if (rc) return rc;
    }
    return PEFTC_OK;
}
