/* replay.c: runs every file under DIR/<target>/ through that fuzz target (the
 * regression inputs the fuzzers found, and the seed corpora if generated).
 * Prints one ok line per target (the count of inputs) and "## p f"; a crash is
 * the test run's failure (the runner sees no result line). */
#include "fuzz.h"
#include <dirent.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

static int run_dir(const fuzz_target *t, const char *dir, long *count)
{
    DIR *d = opendir(dir);
    if (!d) return 0;
    struct dirent *e;
    while ((e = readdir(d))) {
        if (e->d_name[0] == '.') continue;
        char path[4096];
        snprintf(path, sizeof path, "%.3800s/%.255s", dir, e->d_name);
        struct stat sb;
        if (stat(path, &sb) || !S_ISREG(sb.st_mode) || sb.st_size > (64 << 20)) continue;
        FILE *f = fopen(path, "rb");
        if (!f) continue;
        size_t n = (size_t)sb.st_size;
        unsigned char *buf = malloc(n ? n : 1);
        if (buf && fread(buf, 1, n, f) == n) { t->run(buf, n); (*count)++; }
        free(buf);
        fclose(f);
    }
    closedir(d);
    return 1;
}

int main(int argc, char **argv)
{
    int pass = 0, fail = 0;
    for (int i = 0; fuzz_targets[i].name; i++) {
        long count = 0;
        int found = 0;
        for (int a = 1; a < argc; a++) {
            char dir[4096];
            snprintf(dir, sizeof dir, "%.3900s/%.64s", argv[a], fuzz_targets[i].name);
            found |= run_dir(&fuzz_targets[i], dir, &count);
        }
        if (found) { printf("ok   - fuzz target %s: %ld inputs replayed, no crash\n", fuzz_targets[i].name, count); pass++; }
        else { printf("FAIL - fuzz target %s: no regression or seed inputs\n", fuzz_targets[i].name); fail++; }
    }
    fuzz_cleanup();
    printf("## %d %d\n", pass, fail);
    return fail != 0;
}
