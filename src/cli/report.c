/* report.c: a sweep directory as one self-contained report.html (inline CSS
 * and SVG, no script, no external file) or a Markdown table: the results
 * table, metric vs trainable % on a log axis (He et al.'s Figure 1), loss
 * curves, speed and memory bars, and the four design dimensions as small
 * multiples. */
#include "core/json_file.h"
#include "cli/cli.h"
#include "cli/sweep.h"

#include <errno.h>
#include <jansson.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#define REPORT_MAX_POINTS 100000   /* loss rows kept per run */

typedef struct rrun {
    const char *dir, *name, *method, *budget, *spec;
    const char *dims[4];
    int group, grid, lr_find, done, seed;
    double saved_pct, trainable_pct, lr;
    double metric, tok_s, rss_mb, train_s;   /* NAN when missing */
    int n_loss;
    float *loss_step, *loss;
    int color;
} rrun;

typedef struct rgroup {
    int first;           /* its first run (name, budget, spec) */
    int n;               /* finished runs */
    double mean, sd, tok_s, rss_mb, train_s, saved_pct;
} rgroup;

static const char *const dim_keys[4] = {"insertion", "representation", "composition", "functional_form"};
static const char *const dim_titles[4] = {"insertion form", "modified representation", "composition function", "functional form"};
static const char *const palette[] = {"#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2",
                                      "#7f7f7f", "#bcbd22", "#17becf", "#393b79", "#ad494a", "#637939", "#843c39",
                                      "#e7ba52", "#6b6ecf", "#31a354", "#de9ed6", "#3182bd", "#e6550d"};   /* 20: a sweep of 15+ methods */
#define N_COLORS (int)(sizeof palette / sizeof *palette)

static double jnum(json_t *o, const char *k)
{
    json_t *v = json_object_get(o, k);
    return json_is_number(v) ? json_number_value(v) : NAN;
}
static const char *jstr(json_t *o, const char *k)
{
    const char *s = json_string_value(json_object_get(o, k));
    return s ? s : "";
}

static json_t *load_in(const char *dir, const char *run, const char *file)
{
    char path[4400];
    snprintf(path, sizeof path, "%s/%s/%s", dir, run, file);
    return peftc_json_load_file(path, 0, NULL);
}

static void load_loss(const char *dir, rrun *r)
{
    char path[4400];
    snprintf(path, sizeof path, "%s/%s/loss.csv", dir, r->dir);
    FILE *f = fopen(path, "r");
    if (!f) return;
    char line[256];
    int cap = 0;
    while (fgets(line, sizeof line, f) && r->n_loss < REPORT_MAX_POINTS) {
        int step;
        float loss;
        if (sscanf(line, "%d,%f", &step, &loss) != 2 || !isfinite(loss)) continue;
        if (r->n_loss == cap) {
            cap = cap ? 2 * cap : 256;
            float *a = realloc(r->loss_step, (size_t)cap * sizeof *a), *b = a ? realloc(r->loss, (size_t)cap * sizeof *b) : NULL;
            if (a) r->loss_step = a;
            if (!a || !b) break;
            r->loss = b;
        }
        r->loss_step[r->n_loss] = (float)step;
        r->loss[r->n_loss++] = loss;
    }
    fclose(f);
}

/* ------------------------------------------------------------ output */

typedef struct out { FILE *f; } out;

static void esc(FILE *f, const char *s)
{
    for (; *s; s++) {
        switch (*s) {
        case '<': fputs("&lt;", f); break;
        case '>': fputs("&gt;", f); break;
        case '&': fputs("&amp;", f); break;
        case '"': fputs("&quot;", f); break;
        default: fputc(*s, f);
        }
    }
}

static void fmt_num(char *b, size_t n, double v, const char *fmt)
{
    if (isnan(v)) snprintf(b, n, "—");
    else snprintf(b, n, fmt, v);
}

/* A plot area: the SVG's size and margins, data ranges, log x or not. */
typedef struct plot {
    double W, H, ml, mr, mt, mb;
    double x0, x1, y0, y1;
    int logx;
} plot;

static double px(const plot *p, double x)
{
    double a = p->logx ? log10(x) : x, lo = p->logx ? log10(p->x0) : p->x0, hi = p->logx ? log10(p->x1) : p->x1;
    return p->ml + (a - lo) / (hi - lo > 0 ? hi - lo : 1) * (p->W - p->ml - p->mr);
}
static double py(const plot *p, double y)
{
    return p->H - p->mb - (y - p->y0) / (p->y1 - p->y0 > 0 ? p->y1 - p->y0 : 1) * (p->H - p->mt - p->mb);
}

/* A "nice" step for about n ticks over [lo, hi]. */
static double nice_step(double lo, double hi, int n)
{
    double raw = (hi - lo) / (n > 0 ? n : 1);
    if (!(raw > 0)) return 1;
    double mag = pow(10, floor(log10(raw))), r = raw / mag;
    return (r < 1.5 ? 1 : r < 3 ? 2 : r < 7 ? 5 : 10) * mag;
}

static void axes(FILE *f, const plot *p, const char *xlabel, const char *ylabel, int yticks)
{
    fprintf(f, "<rect x=\"%.1f\" y=\"%.1f\" width=\"%.1f\" height=\"%.1f\" class=\"frame\"/>\n", p->ml, p->mt,
            p->W - p->ml - p->mr, p->H - p->mt - p->mb);
    double st = nice_step(p->y0, p->y1, yticks);
    for (double y = ceil(p->y0 / st) * st; y <= p->y1 + 1e-9 * st; y += st) {
        fprintf(f, "<line x1=\"%.1f\" x2=\"%.1f\" y1=\"%.1f\" y2=\"%.1f\" class=\"grid\"/>", p->ml, p->W - p->mr, py(p, y), py(p, y));
        fprintf(f, "<text x=\"%.1f\" y=\"%.1f\" class=\"tick\" text-anchor=\"end\">%.4g</text>\n", p->ml - 4, py(p, y) + 4, y);
    }
    if (p->logx) {
        for (int e = (int)floor(log10(p->x0)); e <= (int)ceil(log10(p->x1)); e++)
            for (int m = 1; m <= 5; m += m == 1 ? 1 : 3) {   /* 1, 2, 5 x 10^e */
                double x = m * pow(10, e);
                if (x < p->x0 * 0.999 || x > p->x1 * 1.001) continue;
                fprintf(f, "<line x1=\"%.1f\" x2=\"%.1f\" y1=\"%.1f\" y2=\"%.1f\" class=\"grid\"/>", px(p, x), px(p, x), p->mt, p->H - p->mb);
                fprintf(f, "<text x=\"%.1f\" y=\"%.1f\" class=\"tick\" text-anchor=\"middle\">%g%%</text>\n", px(p, x),
                        p->H - p->mb + 14, x);
            }
    } else {
        double sx = nice_step(p->x0, p->x1, 5);
        for (double x = ceil(p->x0 / sx) * sx; x <= p->x1 + 1e-9 * sx; x += sx)
            fprintf(f, "<text x=\"%.1f\" y=\"%.1f\" class=\"tick\" text-anchor=\"middle\">%g</text>\n", px(p, x), p->H - p->mb + 14, x);
    }
    if (xlabel)
        fprintf(f, "<text x=\"%.1f\" y=\"%.1f\" class=\"axis-label\" text-anchor=\"middle\">%s</text>\n",
                (p->ml + p->W - p->mr) / 2, p->H - 6, xlabel);
    if (ylabel)
        fprintf(f, "<text transform=\"translate(14 %.1f) rotate(-90)\" class=\"axis-label\" text-anchor=\"middle\">%s</text>\n",
                (p->mt + p->H - p->mb) / 2, ylabel);
}

/* Entry names in order of first appearance, their colours. */
typedef struct names { const char *name[256]; int n; } names;

static int name_index(names *nm, const char *s)
{
    for (int i = 0; i < nm->n; i++) if (!strcmp(nm->name[i], s)) return i;
    if (nm->n < 256) nm->name[nm->n++] = s;
    return nm->n - 1;
}

static void legend(FILE *f, const names *nm, double x, double y)
{
    fprintf(f, "<g class=\"legend\">\n");
    for (int i = 0; i < nm->n; i++) {
        fprintf(f, "<rect x=\"%.1f\" y=\"%.1f\" width=\"10\" height=\"10\" fill=\"%s\"/><text x=\"%.1f\" y=\"%.1f\" class=\"tick\">",
                x, y + 15 * i, palette[i % N_COLORS], x + 14, y + 15 * i + 9);
        esc(f, nm->name[i]);
        fprintf(f, "</text>\n");
    }
    fprintf(f, "</g>\n");
}

static const char css[] =
    "body{font-family:system-ui,sans-serif;margin:24px;color:#222;max-width:1200px}"
    "table{border-collapse:collapse;font-size:13px}td,th{border:1px solid #ccc;padding:3px 7px;text-align:right}"
    "td.l,th.l{text-align:left}th{background:#f0f0f0}h2{margin-top:28px}"
    "svg{background:#fff;margin:4px}.frame{fill:none;stroke:#999}.grid{stroke:#eee}"
    ".tick{font-size:10px;fill:#555}.axis-label{font-size:12px;fill:#222}.title{font-size:12px;font-weight:bold}"
    ".curve{fill:none;stroke-width:1.2;opacity:.8}.meanline{fill:none;stroke-width:1.5;opacity:.6}"
    ".note{color:#555;font-size:13px}";

/* The lr grids: per (method, budget) with a grid, each rate's first-seed
 * metric and the rate its main runs took (marked). The choice reads the eval
 * file that the results table reports, so the note says so: the chosen rates'
 * scores are optimistic by the selection. html: a table, else Markdown. */
static void write_grids(FILE *f, const rrun *R, int nr, const rgroup *G, int ng, const char *metric, const char *eval, int html)
{
    int any = 0;
    for (int i = 0; i < nr; i++) any |= R[i].grid;
    if (!any) return;
    if (html) fprintf(f, "<h2>Learning-rate choice</h2>\n<table id=\"lr-grid\"><tr><th class=\"l\">method</th><th class=\"l\">budget</th>"
                         "<th class=\"l\">first seed's eval %s per lr (* chosen)</th></tr>\n", metric);
    else fprintf(f, "\nLearning-rate choice (first seed's eval %s per lr, * the rate the runs above use):\n\n"
                    "| method | budget | %s per lr |\n|---|---|---|\n", metric, metric);
    for (int g = 0; g < ng; g++) {
        const rrun *m = &R[G[g].first];
        int n = 0;
        for (int i = 0; i < nr; i++) n += R[i].grid && R[i].group == m->group;
        if (!n) continue;
        if (html) { fprintf(f, "<tr><td class=\"l\">"); esc(f, m->name); fprintf(f, "</td><td class=\"l\">"); esc(f, m->budget); fprintf(f, "</td><td class=\"l\">"); }
        else fprintf(f, "| %s | %s | ", m->name, m->budget);
        int k = 0;
        for (int i = 0; i < nr; i++) {
            const rrun *r = &R[i];
            if (!r->grid || r->group != m->group) continue;
            if (r->lr_find) fprintf(f, "%srange test from %.3g: %.3g", k++ ? ", " : "", r->lr, m->lr);
            else if (!r->done || isnan(r->metric)) fprintf(f, "%s%.3g: —", k++ ? ", " : "", r->lr);
            else fprintf(f, "%s%.3g: %.2f%s", k++ ? ", " : "", r->lr, 100 * r->metric,
                         m->lr > 0 && fabs(r->lr - m->lr) <= 1e-6 * m->lr ? "*" : "");
        }
        fprintf(f, html ? "</td></tr>\n" : " |\n");
    }
    if (html) fprintf(f, "</table>\n<p class=\"note\">");
    else fprintf(f, "\n");
    fprintf(f, "The rate is chosen by the first seed's eval %s on ", metric);
    if (html) { fprintf(f, "<code>"); esc(f, eval); fprintf(f, "</code>"); } else fprintf(f, "`%s`", eval);
    fprintf(f, ", the file the results are reported on: the chosen rates' scores are optimistic by that choice "
               "(the later seeds took no part in it).%s\n", html ? "</p>" : "");
}

static int write_html(FILE *f, json_t *man, rrun *R, int nr, rgroup *G, int ng, const char *metric)
{
    names nm = {{0}, 0};
    for (int i = 0; i < nr; i++) R[i].color = name_index(&nm, R[i].name);
    int n_done = 0;
    for (int i = 0; i < nr; i++) n_done += !R[i].grid && R[i].done && !isnan(R[i].metric);
    fprintf(f, "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"><title>peftc sweep report</title>\n<style>%s</style></head><body>\n", css);
    fprintf(f, "<h1>peftc sweep</h1>\n<p class=\"note\">model <code>");
    esc(f, jstr(man, "model"));
    fprintf(f, "</code>, train <code>");
    esc(f, jstr(man, "train"));
    fprintf(f, "</code>, eval <code>");
    esc(f, jstr(man, "eval"));
    fprintf(f, "</code>; %lld steps of batch %lld, max length %lld; lr grid %lld; metric: eval %s. "
               "Trainable %% counts what the adapter keeps (prefix / P-tuning reparameterisation folded, the papers' count) "
               "over the base model; the head is included.</p>\n",
            (long long)json_integer_value(json_object_get(man, "steps")), (long long)json_integer_value(json_object_get(man, "batch")),
            (long long)json_integer_value(json_object_get(man, "max_len")), (long long)json_integer_value(json_object_get(man, "lr_grid")), metric);

    /* the table */
    fprintf(f, "<h2>Results</h2>\n<table id=\"results\"><tr><th class=\"l\">method</th><th class=\"l\">budget</th><th class=\"l\">spec</th>"
               "<th>trainable %%</th><th>lr</th><th>%s (mean ± sd)</th><th>runs</th><th>tokens/s</th><th>peak RSS MB</th><th>train s</th></tr>\n", metric);
    for (int g = 0; g < ng; g++) {
        const rrun *r = &R[G[g].first];
        char m[64], sd[32], t[32], rs[32], ts[32];
        fmt_num(m, sizeof m, G[g].mean * 100, "%.2f");
        fmt_num(sd, sizeof sd, G[g].sd * 100, "%.2f");
        fmt_num(t, sizeof t, G[g].tok_s, "%.0f");
        fmt_num(rs, sizeof rs, G[g].rss_mb, "%.0f");
        fmt_num(ts, sizeof ts, G[g].train_s, "%.1f");
        fprintf(f, "<tr><td class=\"l\" style=\"color:%s\">", palette[r->color % N_COLORS]);
        esc(f, r->name);
        fprintf(f, "</td><td class=\"l\">");
        esc(f, r->budget);
        fprintf(f, "</td><td class=\"l\">");
        esc(f, r->spec);
        fprintf(f, "</td><td>%.4f</td><td>%.2g</td><td>%s ± %s</td><td>%d</td><td>%s</td><td>%s</td><td>%s</td></tr>\n", r->saved_pct,
                r->lr, m, sd, G[g].n, t, rs, ts);
    }
    fprintf(f, "</table>\n<p class=\"note\">Metric in %%; sd over seeds (n − 1). tokens/s, peak RSS (getrusage of the run's process) "
               "and train time are means over the seeds.</p>\n");
    write_grids(f, R, nr, G, ng, metric, jstr(man, "eval"), 1);

    /* Figure 1 */
    plot p = {720, 420, 60, 150, 20, 44, INFINITY, -INFINITY, INFINITY, -INFINITY, 1};
    for (int i = 0; i < nr; i++) {
        if (R[i].grid || !R[i].done || isnan(R[i].metric) || !(R[i].saved_pct > 0)) continue;
        if (R[i].saved_pct < p.x0) p.x0 = R[i].saved_pct;
        if (R[i].saved_pct > p.x1) p.x1 = R[i].saved_pct;
        if (R[i].metric * 100 < p.y0) p.y0 = R[i].metric * 100;
        if (R[i].metric * 100 > p.y1) p.y1 = R[i].metric * 100;
    }
    fprintf(f, "<h2>%s vs trainable parameters</h2>\n", metric);
    if (n_done == 0) {
        fprintf(f, "<p>No finished run yet.</p>\n");
    } else {
        p.x0 /= 1.6; p.x1 *= 1.6;
        double pad = (p.y1 - p.y0) * 0.08 + 0.5;
        p.y0 -= pad; p.y1 += pad;
        char xl[] = "trainable parameters (% of the model, log scale)", yl[96];
        snprintf(yl, sizeof yl, "eval %s (%%)", metric);
        fprintf(f, "<svg id=\"fig-metric\" width=\"%.0f\" height=\"%.0f\" viewBox=\"0 0 %.0f %.0f\" xmlns=\"http://www.w3.org/2000/svg\">\n",
                p.W, p.H, p.W, p.H);
        axes(f, &p, xl, yl, 6);
        /* the means of each method, joined across budgets */
        for (int c = 0; c < nm.n; c++) {
            fprintf(f, "<polyline class=\"meanline\" stroke=\"%s\" points=\"", palette[c % N_COLORS]);
            for (int g = 0; g < ng; g++)
                if (R[G[g].first].color == c && G[g].n > 0) fprintf(f, "%.1f,%.1f ", px(&p, G[g].saved_pct), py(&p, G[g].mean * 100));
            fprintf(f, "\"/>\n");
        }
        for (int i = 0; i < nr; i++) {
            const rrun *r = &R[i];
            if (r->grid || !r->done || isnan(r->metric) || !(r->saved_pct > 0)) continue;
            fprintf(f, "<circle class=\"run\" cx=\"%.1f\" cy=\"%.1f\" r=\"3\" fill=\"%s\" fill-opacity=\"0.55\"><title>", px(&p, r->saved_pct),
                    py(&p, r->metric * 100), palette[r->color % N_COLORS]);
            esc(f, r->dir);
            fprintf(f, ": %.2f%% at %.4f%%</title></circle>\n", r->metric * 100, r->saved_pct);
        }
        for (int g = 0; g < ng; g++) {
            if (G[g].n == 0) continue;
            double x = px(&p, G[g].saved_pct), y = py(&p, G[g].mean * 100);
            fprintf(f, "<path class=\"mean\" d=\"M%.1f %.1fl6 6l-6 6l-6 -6z\" fill=\"%s\" stroke=\"#000\" stroke-width=\"0.6\"><title>", x, y - 6,
                    palette[R[G[g].first].color % N_COLORS]);
            esc(f, R[G[g].first].name);
            fprintf(f, " %s: mean %.2f ± %.2f (n=%d)</title></path>\n", R[G[g].first].budget, G[g].mean * 100, G[g].sd * 100, G[g].n);
        }
        legend(f, &nm, p.W - p.mr + 12, p.mt + 4);
        fprintf(f, "</svg>\n<p class=\"note\">Circles: runs (one per seed); diamonds: means over seeds, joined per method across budgets "
                   "(He et al. 2022, Figure 1).</p>\n");
    }

    /* loss curves: one panel per method */
    fprintf(f, "<h2>Training loss</h2>\n");
    double lmax = 0, smax = 1;
    for (int i = 0; i < nr; i++)
        for (int k = 0; k < R[i].n_loss; k++) {
            if (R[i].loss[k] > lmax) lmax = R[i].loss[k];
            if (R[i].loss_step[k] > smax) smax = R[i].loss_step[k];
        }
    for (int c = 0; c < nm.n; c++) {
        plot q = {280, 190, 44, 10, 22, 36, 0, smax, 0, lmax > 0 ? lmax * 1.05 : 1, 0};
        fprintf(f, "<svg class=\"loss\" width=\"%.0f\" height=\"%.0f\" viewBox=\"0 0 %.0f %.0f\" xmlns=\"http://www.w3.org/2000/svg\">\n",
                q.W, q.H, q.W, q.H);
        fprintf(f, "<text x=\"%.1f\" y=\"14\" class=\"title\" fill=\"%s\">", q.ml, palette[c % N_COLORS]);
        esc(f, nm.name[c]);
        fprintf(f, "</text>\n");
        axes(f, &q, "step", "loss", 4);
        for (int i = 0; i < nr; i++) {
            const rrun *r = &R[i];
            if (r->color != c || r->grid || r->n_loss == 0) continue;
            /* budgets differ by dash pattern */
            int b = 0;
            for (int g = 0; g < ng; g++) if (R[G[g].first].color == c) { if (!strcmp(R[G[g].first].budget, r->budget)) break; b++; }
            fprintf(f, "<polyline class=\"curve\" stroke=\"%s\" stroke-dasharray=\"%s\" points=\"", palette[c % N_COLORS],
                    b == 0 ? "none" : b == 1 ? "5 3" : "2 2");
            /* per-batch losses are noisy: each point is the mean of a window
             * of about 1/30 of the run (at most ~400 points a curve) */
            int win = r->n_loss / 30 > 0 ? r->n_loss / 30 : 1, stride = r->n_loss / 400 + 1;
            for (int k = 0; k < r->n_loss; k += stride) {
                int a = k - win / 2 > 0 ? k - win / 2 : 0, b = k + win / 2 + 1 < r->n_loss ? k + win / 2 + 1 : r->n_loss;
                double sum = 0;
                for (int j = a; j < b; j++) sum += r->loss[j];
                fprintf(f, "%.1f,%.1f ", px(&q, r->loss_step[k]), py(&q, sum / (b - a)));
            }
            fprintf(f, "\"><title>");
            esc(f, r->dir);
            fprintf(f, "</title></polyline>\n");
        }
        fprintf(f, "</svg>\n");
    }
    fprintf(f, "<p class=\"note\">One line per run (seeds overlaid), each point the mean loss over a window of 1/30 of the run; "
               "budgets: solid, dashed, dotted in the order of the table.</p>\n");

    /* speed and memory bars */
    for (int which = 0; which < 2; which++) {
        double vmax = 0;
        for (int g = 0; g < ng; g++) {
            double v = which ? G[g].rss_mb : G[g].tok_s;
            if (!isnan(v) && v > vmax) vmax = v;
        }
        double rowh = 16, H = 30 + rowh * ng, W = 720, ml = 210;
        fprintf(f, "<h2>%s</h2>\n<svg class=\"bars\" id=\"%s\" width=\"%.0f\" height=\"%.0f\" viewBox=\"0 0 %.0f %.0f\" xmlns=\"http://www.w3.org/2000/svg\">\n",
                which ? "Peak memory (RSS, MB)" : "Training speed (tokens/s)", which ? "bars-rss" : "bars-speed", W, H, W, H);
        for (int g = 0; g < ng; g++) {
            double v = which ? G[g].rss_mb : G[g].tok_s;
            const rrun *r = &R[G[g].first];
            double y = 10 + rowh * g, w = isnan(v) || vmax <= 0 ? 0 : (W - ml - 70) * v / vmax;
            fprintf(f, "<text x=\"%.0f\" y=\"%.1f\" class=\"tick\" text-anchor=\"end\">", ml - 6, y + 11);
            esc(f, r->name);
            fprintf(f, " ");
            esc(f, r->budget);
            fprintf(f, "</text><rect x=\"%.0f\" y=\"%.1f\" width=\"%.1f\" height=\"%.0f\" fill=\"%s\"/>", ml, y + 2, w, rowh - 4,
                    palette[r->color % N_COLORS]);
            fprintf(f, "<text x=\"%.1f\" y=\"%.1f\" class=\"tick\">%.0f</text>\n", ml + w + 4, y + 11, isnan(v) ? 0 : v);
        }
        fprintf(f, "<text x=\"%.0f\" y=\"%.0f\" class=\"axis-label\" text-anchor=\"middle\">%s</text>\n</svg>\n", ml + (W - ml) / 2, H - 4,
                which ? "peak RSS of the run's process (MB), mean over seeds" : "training tokens per second, mean over seeds");
    }

    /* the four design dimensions */
    fprintf(f, "<h2>Design dimensions</h2>\n<p class=\"note\">Each run placed by one dimension of the unified view (He et al. 2022), "
               "read from its built method; points coloured by method; black bars: the category's mean. Categories mix budgets: "
               "compare within a budget in the table.</p>\n");
    for (int d = 0; d < 4; d++) {
        const char *cat[32];
        int nc = 0;
        for (int i = 0; i < nr; i++) {
            if (R[i].grid || !R[i].done || isnan(R[i].metric)) continue;
            int k = 0;
            while (k < nc && strcmp(cat[k], R[i].dims[d])) k++;
            if (k == nc && nc < 32) cat[nc++] = R[i].dims[d];
        }
        plot q = {290, 230, 44, 10, 22, 62, -0.5, nc - 0.5, p.y0, p.y1, 0};
        if (!isfinite(q.y0) || !isfinite(q.y1)) { q.y0 = 0; q.y1 = 100; }
        fprintf(f, "<svg class=\"dims\" width=\"%.0f\" height=\"%.0f\" viewBox=\"0 0 %.0f %.0f\" xmlns=\"http://www.w3.org/2000/svg\">\n",
                q.W, q.H, q.W, q.H);
        fprintf(f, "<text x=\"%.1f\" y=\"14\" class=\"title\">%s</text>\n", q.ml, dim_titles[d]);
        fprintf(f, "<rect x=\"%.1f\" y=\"%.1f\" width=\"%.1f\" height=\"%.1f\" class=\"frame\"/>\n", q.ml, q.mt, q.W - q.ml - q.mr, q.H - q.mt - q.mb);
        double st = nice_step(q.y0, q.y1, 4);
        for (double y = ceil(q.y0 / st) * st; y <= q.y1 + 1e-9 * st; y += st)
            fprintf(f, "<line x1=\"%.1f\" x2=\"%.1f\" y1=\"%.1f\" y2=\"%.1f\" class=\"grid\"/><text x=\"%.1f\" y=\"%.1f\" class=\"tick\" text-anchor=\"end\">%.4g</text>\n",
                    q.ml, q.W - q.mr, py(&q, y), py(&q, y), q.ml - 4, py(&q, y) + 4, y);
        fprintf(f, "<text transform=\"translate(12 %.1f) rotate(-90)\" class=\"axis-label\" text-anchor=\"middle\">%s (%%)</text>\n",
                (q.mt + q.H - q.mb) / 2, metric);
        for (int k = 0; k < nc; k++) {
            double x = px(&q, k), sum = 0;
            int n = 0, j = 0;
            fprintf(f, "<text x=\"%.1f\" y=\"%.1f\" class=\"tick\" text-anchor=\"end\" transform=\"rotate(-25 %.1f %.1f)\">", x + 4,
                    q.H - q.mb + 14, x + 4, q.H - q.mb + 14);
            esc(f, cat[k]);
            fprintf(f, "</text>\n");
            for (int i = 0; i < nr; i++) {
                const rrun *r = &R[i];
                if (r->grid || !r->done || isnan(r->metric) || strcmp(r->dims[d], cat[k])) continue;
                double jitter = ((j++ % 9) - 4) * 3.0;   /* spread overlapping points */
                fprintf(f, "<circle class=\"dimpt\" cx=\"%.1f\" cy=\"%.1f\" r=\"2.5\" fill=\"%s\" fill-opacity=\"0.6\"><title>", x + jitter,
                        py(&q, r->metric * 100), palette[r->color % N_COLORS]);
                esc(f, r->dir);
                fprintf(f, "</title></circle>\n");
                sum += r->metric * 100;
                n++;
            }
            if (n) fprintf(f, "<line x1=\"%.1f\" x2=\"%.1f\" y1=\"%.1f\" y2=\"%.1f\" stroke=\"#000\" stroke-width=\"2\"/>\n", x - 16, x + 16,
                           py(&q, sum / n), py(&q, sum / n));
        }
        fprintf(f, "</svg>\n");
    }
    fprintf(f, "<p class=\"note\">Written by <code>peftc report</code>; self-contained (inline CSS and SVG, no script).</p>\n</body></html>\n");
    return ferror(f) ? -1 : 0;
}

static int write_md(FILE *f, json_t *man, rrun *R, int nr, rgroup *G, int ng, const char *metric)
{
    fprintf(f, "| method | budget | spec | trainable %% | lr | %s (mean ± sd) | runs | tokens/s | peak RSS MB | train s |\n", metric);
    fprintf(f, "|---|---|---|---:|---:|---:|---:|---:|---:|---:|\n");
    for (int g = 0; g < ng; g++) {
        const rrun *r = &R[G[g].first];
        char m[32], sd[32], t[32], rs[32], ts[32];
        fmt_num(m, sizeof m, G[g].mean * 100, "%.2f");
        fmt_num(sd, sizeof sd, G[g].sd * 100, "%.2f");
        fmt_num(t, sizeof t, G[g].tok_s, "%.0f");
        fmt_num(rs, sizeof rs, G[g].rss_mb, "%.0f");
        fmt_num(ts, sizeof ts, G[g].train_s, "%.1f");
        fprintf(f, "| %s | %s | ", r->name, r->budget);
        for (const char *c = r->spec; *c; c++) fputs(*c == '|' ? "\\|" : (char[2]){*c, 0}, f);
        fprintf(f, " | %.4f | %.2g | %s ± %s | %d | %s | %s | %s |\n", r->saved_pct, r->lr, m, sd, G[g].n, t, rs, ts);
    }
    write_grids(f, R, nr, G, ng, metric, jstr(man, "eval"), 0);
    return ferror(f) ? -1 : 0;
}

int sweep_report(const char *dir, const char *format, const char *out_path)
{
    char path[4400];
    snprintf(path, sizeof path, "%s/sweep.json", dir);
    json_error_t je;
    json_t *man = peftc_json_load_file(path, 0, &je);
    if (!man) return cli_errorf(1, "%s: %s (is it a sweep directory?)", path, je.text);
    json_t *runs = json_object_get(man, "runs");
    const char *metric = json_string_value(json_object_get(man, "metric"));
    if (!json_is_array(runs) || !metric || (strcmp(metric, "accuracy") && strcmp(metric, "f1") && strcmp(metric, "mcc"))) {
        json_decref(man);
        return cli_errorf(1, "%s: no \"runs\" list or \"metric\"", path);
    }
    int nr = (int)json_array_size(runs);
    rrun *R = calloc((size_t)nr + 1, sizeof *R);
    rgroup *G = calloc((size_t)nr + 1, sizeof *G);
    json_t **keep = calloc((size_t)nr * 2 + 1, sizeof *keep);
    if (!R || !G || !keep) { free(R); free(G); free(keep); json_decref(man); return cli_errorf(1, "out of memory"); }
    char key[64];
    snprintf(key, sizeof key, "eval_%s", metric);
    int ng = 0;
    for (int i = 0; i < nr; i++) {
        json_t *o = json_array_get(runs, (size_t)i);
        rrun *r = &R[i];
        r->dir = jstr(o, "dir"); r->name = jstr(o, "name"); r->method = jstr(o, "method");
        r->budget = jstr(o, "budget"); r->spec = jstr(o, "spec");
        for (int d = 0; d < 4; d++) r->dims[d] = jstr(o, dim_keys[d]);
        r->group = (int)json_integer_value(json_object_get(o, "group"));
        r->grid = json_is_true(json_object_get(o, "grid"));
        r->lr_find = json_is_true(json_object_get(o, "lr_find"));
        r->saved_pct = jnum(o, "saved_percent");
        r->lr = jnum(o, "lr");
        r->metric = r->tok_s = r->rss_mb = r->train_s = NAN;
        if (!*r->dir || strstr(r->dir, "..") || strchr(r->dir, '/')) continue;   /* a run directory is one name inside dir */
        json_t *rj = load_in(dir, r->dir, "run.json"), *mj = load_in(dir, r->dir, "metrics.json");
        keep[2 * i] = rj; keep[2 * i + 1] = mj;
        r->done = rj && !strcmp(jstr(rj, "status"), "done") && mj;
        if (r->done) {
            r->metric = jnum(mj, key);
            r->tok_s = jnum(mj, "train_tokens_per_s");
            r->train_s = jnum(mj, "train_seconds");
            r->rss_mb = jnum(rj, "peak_rss_mb");
            double tp = jnum(mj, "trainable_percent");
            r->trainable_pct = tp;
        }
        load_loss(dir, r);
    }
    /* groups: the main runs of one (method, budget), in plan order */
    int *gid = calloc((size_t)nr + 1, sizeof *gid);
    for (int i = 0; i < nr && gid; i++) {
        if (R[i].grid) continue;
        int g = 0;
        while (g < ng && R[G[g].first].group != R[i].group) g++;
        if (g == ng) { G[ng].first = i; G[ng].saved_pct = R[i].saved_pct; ng++; }
        gid[i] = g;
    }
    for (int g = 0; g < ng; g++) {
        double s = 0, s2 = 0, tk = 0, rs = 0, ts = 0;
        int n = 0, nt = 0, nrs = 0, nts = 0;
        for (int i = 0; i < nr; i++) {
            if (R[i].grid || gid[i] != g || !R[i].done) continue;
            if (!isnan(R[i].metric)) { s += R[i].metric; s2 += R[i].metric * R[i].metric; n++; }
            if (!isnan(R[i].tok_s)) { tk += R[i].tok_s; nt++; }
            if (!isnan(R[i].rss_mb)) { rs += R[i].rss_mb; nrs++; }
            if (!isnan(R[i].train_s)) { ts += R[i].train_s; nts++; }
        }
        G[g].n = n;
        G[g].mean = n ? s / n : NAN;
        G[g].sd = n > 1 ? sqrt(fmax(0, (s2 - s * s / n) / (n - 1))) : NAN;
        G[g].tok_s = nt ? tk / nt : NAN;
        G[g].rss_mb = nrs ? rs / nrs : NAN;
        G[g].train_s = nts ? ts / nts : NAN;
    }
    char outp[4400];
    if (out_path) snprintf(outp, sizeof outp, "%s", out_path);
    else snprintf(outp, sizeof outp, "%s/report.%s", dir, format);
    char *text = NULL;
    size_t len = 0;
    FILE *f = open_memstream(&text, &len);
    int rc = 0;
    if (!f || !gid) rc = cli_errorf(1, "out of memory");
    else {
        int w = !strcmp(format, "md") ? write_md(f, man, R, nr, G, ng, metric) : write_html(f, man, R, nr, G, ng, metric);
        fclose(f);
        if (w) rc = cli_errorf(1, "%s: cannot format the report", outp);
        else if (cli_write_atomic(outp, text, len)) rc = cli_errorf(1, "%s: cannot write: %s", outp, strerror(errno));
    }
    free(text);
    free(gid);
    for (int i = 0; i < nr; i++) { free(R[i].loss); free(R[i].loss_step); }
    for (int i = 0; i < 2 * nr; i++) json_decref(keep[i]);
    free(keep); free(R); free(G);
    json_decref(man);
    return rc;
}
