/* One decode step (one new token) of a fully resident Qwen3-MoE, in C, on AVX-512 VNNI.
 *
 * Why: at one token a step, decode reads every active weight once and does little else, so
 * its speed is the memory bandwidth the matrix-vector products reach. In ONNX Runtime's one
 * graph (qcoder_ds/runtime/moe_onnx.py, resident_model) its QMoE op runs each expert's GEMV on
 * one thread and reached ~24 GB/s on a 2-core EPYC, its MatMulNBits ~25 GB/s between the ~60
 * small ops of a token; this kernel splits every product's rows over the threads and reads
 * ~31 GB/s (docs/moe.md). Prefill, and every machine without AVX-512 VNNI, keep the graph.
 *
 * The arithmetic is the graph's: MatMulNBits' int8 path (accuracy_level 4) for every int4
 * product (activations quantized per block to int8, scale max|x|/127; the block's dot product
 * exact in int32; the zero point off as z * sum(x_q)), float32 for the norms, RoPE, attention,
 * the router and SwiGLU. Both paths share the KV cache: the graph's GroupQueryAttention
 * layout [kv_heads, max_context, head_dim], keys stored after RoPE.
 *
 * Plan(dims, arrays, eps, threads) holds the weights (buffers, kept referenced) and the
 * threads; Plan.step(x, position, kv, logits, routing) runs one token without the GIL.
 * Weights are in ONNX Runtime's MatMulNBits layout: packed [rows][blocks][block/2] bytes,
 * scales [rows][blocks] float32, zero points [rows][(blocks + 1) / 2] bytes or none (8).
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__)) && !defined(_WIN32)
#define DK_X86 1
#include <immintrin.h>
#include <pthread.h>
#include <stdatomic.h>
#include <unistd.h>
#define DK_TARGET __attribute__((target("avx512f,avx512bw,avx512vl,avx512dq,avx512vnni")))
#endif

#define MAX_THREADS 64
#define YS(d) ((d)->hidden > (d)->inter ? (d)->hidden : (d)->inter) /* per-expert scratch */
#define SPINS 50000 /* pause iterations a worker waits before it sleeps (~1 ms) */

static int available(void)
{
#ifdef DK_X86
    static int known = -1;
    if (known < 0) {
        __builtin_cpu_init();
        known = __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
                __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512dq") &&
                __builtin_cpu_supports("avx512vnni");
    }
    return known;
#else
    return 0;
#endif
}

#ifdef DK_X86

/* ------------------------------------------------------------------------ int4 products */

typedef struct {
    const uint8_t *q; /* [n][k / 2] */
    const float *s;   /* [n][kb] */
    const uint8_t *z; /* [n][zrow] or NULL */
    int n, k, kb, zrow;
} Q4;

/* Activations of one product, quantized: per 128 values (a "group", 64 weight bytes) their
 * 64 even-indexed then 64 odd-indexed int8 values (the low and high nibbles of the group's
 * bytes); sx16: each of the group's 16 dot-product lanes' activation scale; c: per block,
 * scale * sum of its int8 values (what a zero point takes off). */
typedef struct {
    int8_t *x;
    float *sx16, *c;
    int k;
} QA;

typedef struct {
    int layers, hidden, heads, kv_heads, head_dim, experts, top_k, inter, vocab, max_context;
    int block, norm_topk, kb_h, kb_i, kb_a, zrow_h, zrow_i, zrow_a;
    float eps;
} Dims;

DK_TARGET static inline __m512 exp512(__m512 x)
{
    /* exp(x) = 2^n * e^r, |r| <= ln2/2: Cephes' expf polynomial, exact to ~1 ulp */
    x = _mm512_max_ps(_mm512_min_ps(x, _mm512_set1_ps(88.7f)), _mm512_set1_ps(-88.7f));
    __m512 n = _mm512_roundscale_ps(_mm512_mul_ps(x, _mm512_set1_ps(1.44269504f)),
                                    _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    __m512 r = _mm512_fnmadd_ps(n, _mm512_set1_ps(0.693359375f), x);
    r = _mm512_fnmadd_ps(n, _mm512_set1_ps(-2.12194440e-4f), r);
    __m512 p = _mm512_set1_ps(1.9875691500e-4f);
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.3981999507e-3f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(8.3334519073e-3f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(4.1665795894e-2f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.6666665459e-1f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(5.0000001201e-1f));
    p = _mm512_fmadd_ps(_mm512_mul_ps(p, r), r, _mm512_add_ps(r, _mm512_set1_ps(1.f)));
    return _mm512_scalef_ps(p, n);
}

/* x [k] (k a multiple of 128, blocks of 32 or 64) into a, as MatMulNBits quantizes a row */
DK_TARGET static void quantize(const float *x, int k, int block, QA *a)
{
    const __m512i even = _mm512_setr_epi32(0, 2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 22, 24, 26,
                                           28, 30);
    const __m512i odd = _mm512_add_epi32(even, _mm512_set1_epi32(1));
    const __m512 lim = _mm512_set1_ps(127.f);
    for (int b0 = 0; b0 < k; b0 += block) {
        __m512 m = _mm512_setzero_ps();
        for (int j = 0; j < block; j += 16)
            m = _mm512_max_ps(m, _mm512_abs_ps(_mm512_loadu_ps(x + b0 + j)));
        const float s = _mm512_reduce_max_ps(m) / 127.f;
        const __m512 inv = _mm512_set1_ps(s > 0.f ? 1.f / s : 0.f);
        __m512i sum = _mm512_setzero_si512();
        for (int j = b0; j < b0 + block; j += 32) { /* 32 values: 16 even, 16 odd */
            const __m512 v0 = _mm512_loadu_ps(x + j), v1 = _mm512_loadu_ps(x + j + 16);
            const int g = j / 128, h = (j % 128) / 32;
            __m512 e = _mm512_mul_ps(_mm512_permutex2var_ps(v0, even, v1), inv);
            __m512 o = _mm512_mul_ps(_mm512_permutex2var_ps(v0, odd, v1), inv);
            e = _mm512_max_ps(_mm512_min_ps(e, lim), _mm512_sub_ps(_mm512_setzero_ps(), lim));
            o = _mm512_max_ps(_mm512_min_ps(o, lim), _mm512_sub_ps(_mm512_setzero_ps(), lim));
            const __m512i qe = _mm512_cvtps_epi32(e), qo = _mm512_cvtps_epi32(o);
            _mm_storeu_si128((__m128i *)(a->x + 128 * g + 16 * h), _mm512_cvtsepi32_epi8(qe));
            _mm_storeu_si128((__m128i *)(a->x + 128 * g + 64 + 16 * h),
                             _mm512_cvtsepi32_epi8(qo));
            sum = _mm512_add_epi32(sum, _mm512_add_epi32(qe, qo));
            /* lanes 4h..4h+3 of this group's dot products cover these 32 values */
            for (int l = 4 * h; l < 4 * h + 4; l++)
                a->sx16[16 * g + l] = s;
        }
        a->c[b0 / block] = s * (float)_mm512_reduce_add_epi32(sum);
    }
    a->k = k;
}

/* y[r] = row r of w . the activations, for r in [r0, r1) */
DK_TARGET static void gemv(const Q4 *w, const QA *a, float *y, int r0, int r1)
{
    const int groups = w->k / 128, per = 128 / (w->k / w->kb), kb = w->kb, bytes = w->k / 2;
    const __m512i low = _mm512_set1_epi8(0x0F);
    const __m512i idx = per == 2 ? _mm512_setr_epi32(0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 1, 1, 1, 1)
                                 : _mm512_setr_epi32(0, 0, 0, 0, 1, 1, 1, 1, 2, 2, 2, 2, 3, 3, 3, 3);
    const __mmask8 sm = (__mmask8)((1 << per) - 1);
    for (int r = r0; r < r1; r++) {
        const uint8_t *p = w->q + (size_t)r * bytes;
        const float *sw = w->s + (size_t)r * kb;
        __m512 acc0 = _mm512_setzero_ps(), acc1 = _mm512_setzero_ps();
        int g = 0;
        for (; g + 1 < groups; g += 2) {
            _mm_prefetch((const char *)p + 64 * g + 2048, _MM_HINT_T0);
            _mm_prefetch((const char *)p + 64 * g + 2112, _MM_HINT_T0);
            const __m512i b0 = _mm512_loadu_si512(p + 64 * g);
            const __m512i b1 = _mm512_loadu_si512(p + 64 * g + 64);
            __m512i d0 = _mm512_dpbusd_epi32(_mm512_setzero_si512(), _mm512_and_si512(b0, low),
                                             _mm512_loadu_si512(a->x + 128 * g));
            d0 = _mm512_dpbusd_epi32(d0, _mm512_and_si512(_mm512_srli_epi16(b0, 4), low),
                                     _mm512_loadu_si512(a->x + 128 * g + 64));
            __m512i d1 = _mm512_dpbusd_epi32(_mm512_setzero_si512(), _mm512_and_si512(b1, low),
                                             _mm512_loadu_si512(a->x + 128 * g + 128));
            d1 = _mm512_dpbusd_epi32(d1, _mm512_and_si512(_mm512_srli_epi16(b1, 4), low),
                                     _mm512_loadu_si512(a->x + 128 * g + 192));
            const __m512 s0 = _mm512_permutexvar_ps(
                idx, _mm512_castps128_ps512(_mm_maskz_loadu_ps(sm, sw + g * per)));
            const __m512 s1 = _mm512_permutexvar_ps(
                idx, _mm512_castps128_ps512(_mm_maskz_loadu_ps(sm, sw + g * per + per)));
            acc0 = _mm512_fmadd_ps(_mm512_cvtepi32_ps(d0),
                                   _mm512_mul_ps(s0, _mm512_loadu_ps(a->sx16 + 16 * g)), acc0);
            acc1 = _mm512_fmadd_ps(_mm512_cvtepi32_ps(d1),
                                   _mm512_mul_ps(s1, _mm512_loadu_ps(a->sx16 + 16 * g + 16)),
                                   acc1);
        }
        if (g < groups) {
            const __m512i b0 = _mm512_loadu_si512(p + 64 * g);
            __m512i d0 = _mm512_dpbusd_epi32(_mm512_setzero_si512(), _mm512_and_si512(b0, low),
                                             _mm512_loadu_si512(a->x + 128 * g));
            d0 = _mm512_dpbusd_epi32(d0, _mm512_and_si512(_mm512_srli_epi16(b0, 4), low),
                                     _mm512_loadu_si512(a->x + 128 * g + 64));
            const __m512 s0 = _mm512_permutexvar_ps(
                idx, _mm512_castps128_ps512(_mm_maskz_loadu_ps(sm, sw + g * per)));
            acc0 = _mm512_fmadd_ps(_mm512_cvtepi32_ps(d0),
                                   _mm512_mul_ps(s0, _mm512_loadu_ps(a->sx16 + 16 * g)), acc0);
        }
        /* zero points: sum over blocks of z * scale * (activation scale * sum) */
        __m512 zacc = _mm512_setzero_ps();
        const uint8_t *zr = w->z ? w->z + (size_t)r * w->zrow : NULL;
        for (int b = 0; b < kb; b += 16) {
            const int nb = kb - b < 16 ? kb - b : 16;
            const __mmask16 m = (__mmask16)((1u << nb) - 1);
            __m512 z;
            if (zr) {
                const __m128i zb = _mm_maskz_loadu_epi8((__mmask16)((1u << ((nb + 1) / 2)) - 1),
                                                        zr + b / 2);
                const __m128i lo = _mm_and_si128(zb, _mm_set1_epi8(15));
                const __m128i hi = _mm_and_si128(_mm_srli_epi16(zb, 4), _mm_set1_epi8(15));
                z = _mm512_cvtepi32_ps(_mm512_cvtepu8_epi32(_mm_unpacklo_epi8(lo, hi)));
            } else {
                z = _mm512_set1_ps(8.f);
            }
            zacc = _mm512_fmadd_ps(_mm512_mul_ps(z, _mm512_maskz_loadu_ps(m, sw + b)),
                                   _mm512_maskz_loadu_ps(m, a->c + b), zacc);
        }
        y[r] = _mm512_reduce_add_ps(_mm512_add_ps(acc0, acc1)) - _mm512_reduce_add_ps(zacc);
    }
}

DK_TARGET static void rms_norm(const float *x, const float *w, float *y, int n, float eps)
{
    __m512 ss = _mm512_setzero_ps();
    for (int i = 0; i < n; i += 16) {
        const __m512 v = _mm512_loadu_ps(x + i);
        ss = _mm512_fmadd_ps(v, v, ss);
    }
    const __m512 r = _mm512_set1_ps(1.f / sqrtf(_mm512_reduce_add_ps(ss) / (float)n + eps));
    for (int i = 0; i < n; i += 16)
        _mm512_storeu_ps(y + i, _mm512_mul_ps(_mm512_mul_ps(_mm512_loadu_ps(x + i), r),
                                              _mm512_loadu_ps(w + i)));
}

/* GroupQueryAttention's rotary, not interleaved: the two halves of each head rotate */
static void rope(float *v, const float *cos, const float *sin, int half)
{
    for (int i = 0; i < half; i++) {
        const float a = v[i], b = v[i + half];
        v[i] = a * cos[i] - b * sin[i];
        v[i + half] = b * cos[i] + a * sin[i];
    }
}

/* ---------------------------------------------------------------------------- threads */

typedef struct Plan Plan;
typedef void (*Task)(Plan *p, int tid, int nth);

typedef struct {
    int nth;
    pthread_t th[MAX_THREADS];
    atomic_int gen, pending, quit;
    int sleepers;
    Task fn;
    Plan *arg;
    pthread_mutex_t mu;
    pthread_cond_t cv;
} Pool;

typedef struct {
    Pool *pool;
    int tid;
} WorkerArg;

/* ------------------------------------------------------------------------------ plan */

typedef struct {
    const float *ln1, *ln2, *qn, *kn, *router;
    Q4 qkv, o;
    const uint8_t *fc1_q, *fc1_z, *fc2_q, *fc2_z;
    const float *fc1_s, *fc2_s;
} Layer;

struct Plan {
    PyObject_HEAD Dims d;
    Layer *layer;
    const float *cos, *sin, *final_norm;
    Q4 head;
    Py_buffer *bufs;
    int nbufs;
    /* scratch */
    float *x, *xn, *qkv, *att, *parts, *h, *ys, *scores, *logits_out, *kcache, *vcache;
    float weights[64];
    int chosen[64];
    Q4 fc1[64], fc2[64];   /* the chosen experts' matrices, in routing order */
    int zp;                /* the int4 matrices have zero points */
    int interleaved;       /* fc1 rows gate/up interleaved (QMoE's layout) or gate then up */
    int per_call;          /* experts given with each layer (a budget), not held by the plan */
    float *kv[2 * 512];
    QA qa_h, qa_a, *qa_i;
    int cur_layer, position;
    Pool pool;
    WorkerArg wargs[MAX_THREADS];
    int started;
    pid_t owner; /* the process that started the threads */
};

static void *worker(void *arg)
{
    WorkerArg *w = (WorkerArg *)arg;
    Pool *p = w->pool;
    int seen = 0;
    for (;;) {
        int spins = 0;
        while (atomic_load_explicit(&p->gen, memory_order_acquire) == seen) {
            if (atomic_load_explicit(&p->quit, memory_order_relaxed))
                return NULL;
            if (++spins < SPINS) {
                _mm_pause();
                continue;
            }
            pthread_mutex_lock(&p->mu);
            while (atomic_load(&p->gen) == seen && !atomic_load(&p->quit)) {
                p->sleepers++;
                pthread_cond_wait(&p->cv, &p->mu);
                p->sleepers--;
            }
            pthread_mutex_unlock(&p->mu);
            spins = 0;
        }
        seen = atomic_load_explicit(&p->gen, memory_order_acquire);
        if (atomic_load(&p->quit))
            return NULL;
        p->fn(p->arg, w->tid, p->nth);
        atomic_fetch_sub_explicit(&p->pending, 1, memory_order_release);
    }
}

/* fn on every thread (this one is thread 0); returns when all are done */
static void parallel(Plan *plan, Task fn)
{
    Pool *p = &plan->pool;
    if (p->nth == 1) {
        fn(plan, 0, 1);
        return;
    }
    p->fn = fn;
    p->arg = plan;
    atomic_store_explicit(&p->pending, p->nth - 1, memory_order_relaxed);
    pthread_mutex_lock(&p->mu);
    atomic_fetch_add_explicit(&p->gen, 1, memory_order_release);
    if (p->sleepers)
        pthread_cond_broadcast(&p->cv);
    pthread_mutex_unlock(&p->mu);
    fn(plan, 0, p->nth);
    while (atomic_load_explicit(&p->pending, memory_order_acquire) > 0)
        _mm_pause();
}

static inline void split(int n, int tid, int nth, int *r0, int *r1)
{
    *r0 = (int)((long)n * tid / nth);
    *r1 = (int)((long)n * (tid + 1) / nth);
}

/* expert e of layer l's stacked arrays (resident: the plan holds every expert) */
static void stacked_expert(Plan *p, int l, int e, Q4 *fc1, Q4 *fc2)
{
    const Dims *d = &p->d;
    const Layer *L = &p->layer[l];
    const size_t n1 = 2 * (size_t)d->inter, n2 = (size_t)d->hidden;
    *fc1 = (Q4){L->fc1_q + (size_t)e * n1 * (d->hidden / 2), L->fc1_s + (size_t)e * n1 * d->kb_h,
                L->fc1_z ? L->fc1_z + (size_t)e * n1 * d->zrow_h : NULL,
                (int)n1, d->hidden, d->kb_h, d->zrow_h};
    *fc2 = (Q4){L->fc2_q + (size_t)e * n2 * (d->inter / 2), L->fc2_s + (size_t)e * n2 * d->kb_i,
                L->fc2_z ? L->fc2_z + (size_t)e * n2 * d->zrow_i : NULL,
                (int)n2, d->inter, d->kb_i, d->zrow_i};
}

DK_TARGET static void task_qkv(Plan *p, int tid, int nth)
{
    const Q4 *w = &p->layer[p->cur_layer].qkv;
    int r0, r1;
    split(w->n, tid, nth, &r0, &r1);
    gemv(w, &p->qa_h, p->qkv, r0, r1);
}

DK_TARGET static void task_attention(Plan *p, int tid, int nth)
{
    const Dims *d = &p->d;
    const int hd = d->head_dim, rep = d->heads / d->kv_heads, n = p->position + 1;
    const float scale = 1.f / sqrtf((float)hd);
    float *sc = p->scores + (size_t)tid * d->max_context;
    int h0, h1;
    split(d->heads, tid, nth, &h0, &h1);
    for (int h = h0; h < h1; h++) {
        const int g = h / rep;
        const float *q = p->qkv + (size_t)h * hd;
        const float *K = p->kcache + (size_t)g * d->max_context * hd;
        const float *V = p->vcache + (size_t)g * d->max_context * hd;
        float m = -INFINITY;
        for (int t = 0; t < n; t++) {
            __m512 acc = _mm512_setzero_ps();
            for (int i = 0; i < hd; i += 16)
                acc = _mm512_fmadd_ps(_mm512_loadu_ps(q + i),
                                      _mm512_loadu_ps(K + (size_t)t * hd + i), acc);
            sc[t] = _mm512_reduce_add_ps(acc) * scale;
            if (sc[t] > m)
                m = sc[t];
        }
        __m512 total = _mm512_setzero_ps();
        int t = 0;
        for (; t + 16 <= n; t += 16) {
            const __m512 e = exp512(_mm512_sub_ps(_mm512_loadu_ps(sc + t), _mm512_set1_ps(m)));
            _mm512_storeu_ps(sc + t, e);
            total = _mm512_add_ps(total, e);
        }
        if (t < n) {
            const __mmask16 mk = (__mmask16)((1u << (n - t)) - 1);
            const __m512 e = exp512(_mm512_sub_ps(_mm512_maskz_loadu_ps(mk, sc + t),
                                                  _mm512_set1_ps(m)));
            _mm512_mask_storeu_ps(sc + t, mk, e);
            total = _mm512_add_ps(total, _mm512_maskz_mov_ps(mk, e));
        }
        const float inv = 1.f / _mm512_reduce_add_ps(total);
        float *out = p->att + (size_t)h * hd;
        for (int i = 0; i < hd; i += 16) {
            __m512 acc = _mm512_setzero_ps();
            for (int s = 0; s < n; s++)
                acc = _mm512_fmadd_ps(_mm512_set1_ps(sc[s]),
                                      _mm512_loadu_ps(V + (size_t)s * hd + i), acc);
            _mm512_storeu_ps(out + i, _mm512_mul_ps(acc, _mm512_set1_ps(inv)));
        }
    }
}

DK_TARGET static void task_o(Plan *p, int tid, int nth)
{
    const Q4 *w = &p->layer[p->cur_layer].o;
    int r0, r1;
    split(w->n, tid, nth, &r0, &r1);
    gemv(w, &p->qa_a, p->h, r0, r1); /* h: o_proj output, [hidden] */
}

/* router logits over the rows of weight_t [hidden][experts] this thread takes: partial sums */
DK_TARGET static void task_router(Plan *p, int tid, int nth)
{
    const Dims *d = &p->d;
    const int E = d->experts, chunks = (E + 15) / 16;
    const __mmask16 last = (__mmask16)(E % 16 ? (1u << (E % 16)) - 1 : 0xFFFF);
    const float *W = p->layer[p->cur_layer].router;
    __m512 acc[32];
    for (int c = 0; c < chunks; c++)
        acc[c] = _mm512_setzero_ps();
    int k0, k1;
    split(d->hidden, tid, nth, &k0, &k1);
    for (int k = k0; k < k1; k++) {
        const __m512 xv = _mm512_set1_ps(p->xn[k]);
        const float *row = W + (size_t)k * E;
        for (int c = 0; c < chunks; c++) {
            const __mmask16 m = c == chunks - 1 ? last : 0xFFFF;
            acc[c] = _mm512_fmadd_ps(xv, _mm512_maskz_loadu_ps(m, row + 16 * c), acc[c]);
        }
    }
    float *out = p->parts + (size_t)tid * E;
    for (int c = 0; c < chunks; c++)
        _mm512_mask_storeu_ps(out + 16 * c, c == chunks - 1 ? last : 0xFFFF, acc[c]);
}

DK_TARGET static void task_gate_up(Plan *p, int tid, int nth)
{
    const Dims *d = &p->d;
    int r0, r1;
    split(2 * d->inter, tid, nth, &r0, &r1);
    for (int j = 0; j < d->top_k; j++) {
        gemv(&p->fc1[j], &p->qa_h, p->h + (size_t)j * 2 * d->inter, r0, r1);
    }
}

/* SwiGLU of each chosen expert (fc1 rows interleave gate and up), quantized for fc2 */
DK_TARGET static void task_swiglu(Plan *p, int tid, int nth)
{
    const Dims *d = &p->d;
    int j0, j1;
    split(d->top_k, tid, nth, &j0, &j1);
    const __m512i even = _mm512_setr_epi32(0, 2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 22, 24, 26,
                                           28, 30);
    const __m512i odd = _mm512_add_epi32(even, _mm512_set1_epi32(1));
    for (int j = j0; j < j1; j++) {
        float *hj = p->h + (size_t)j * 2 * d->inter; /* fc1's output: gate and up */
        float *act = p->ys + (size_t)j * YS(d);      /* scratch: [inter] */
        for (int i = 0; i < d->inter; i += 16) {
            __m512 g, u;
            if (p->interleaved) {
                const __m512 v0 = _mm512_loadu_ps(hj + 2 * i);
                const __m512 v1 = _mm512_loadu_ps(hj + 2 * i + 16);
                g = _mm512_permutex2var_ps(v0, even, v1);
                u = _mm512_permutex2var_ps(v0, odd, v1);
            } else {
                g = _mm512_loadu_ps(hj + i);
                u = _mm512_loadu_ps(hj + d->inter + i);
            }
            const __m512 sig = _mm512_div_ps(
                _mm512_set1_ps(1.f),
                _mm512_add_ps(_mm512_set1_ps(1.f), exp512(_mm512_sub_ps(_mm512_setzero_ps(), g))));
            _mm512_storeu_ps(act + i, _mm512_mul_ps(_mm512_mul_ps(g, sig), u));
        }
        quantize(act, d->inter, d->block, &p->qa_i[j]);
    }
}

/* fc2 of every chosen expert over this thread's rows of the output, weighted, plus the residual */
DK_TARGET static void task_down(Plan *p, int tid, int nth)
{
    const Dims *d = &p->d;
    int r0, r1;
    split(d->hidden, tid, nth, &r0, &r1);
    for (int j = 0; j < d->top_k; j++) {
        gemv(&p->fc2[j], &p->qa_i[j], p->ys + (size_t)j * YS(d), r0, r1);
    }
    for (int r = r0; r < r1; r++) {
        float s = 0.f;
        for (int j = 0; j < d->top_k; j++)
            s += p->weights[j] * p->ys[(size_t)j * YS(d) + r];
        p->x[r] += s; /* x holds the residual stream: attention's output already added */
    }
}

DK_TARGET static void task_head(Plan *p, int tid, int nth)
{
    int r0, r1;
    split(p->head.n, tid, nth, &r0, &r1);
    gemv(&p->head, &p->qa_h, p->logits_out, r0, r1);
}

/* the k largest logits (ties: the lower index), their routing weights as the graph's */
static void route(Plan *p, const float *logits, int *routing)
{
    const Dims *d = &p->d;
    int taken[512] = {0};
    float mx = -INFINITY;
    for (int e = 0; e < d->experts; e++)
        if (logits[e] > mx)
            mx = logits[e];
    float all = 0.f;
    for (int e = 0; e < d->experts; e++)
        all += expf(logits[e] - mx);
    float top = 0.f;
    for (int j = 0; j < d->top_k; j++) {
        int best = -1;
        for (int e = 0; e < d->experts; e++)
            if (!taken[e] && (best < 0 || logits[e] > logits[best]))
                best = e;
        taken[best] = 1;
        p->chosen[j] = best;
        routing[j] = best;
        p->weights[j] = expf(logits[best] - mx);
        top += p->weights[j];
    }
    /* norm_topk_prob: softmax over the k; else the softmax over all experts, as chosen */
    const float denom = d->norm_topk ? top : all;
    for (int j = 0; j < d->top_k; j++)
        p->weights[j] /= denom;
}

static void begin(Plan *p, const float *embedding, int position)
{
    memcpy(p->x, embedding, sizeof(float) * p->d.hidden);
    p->position = position;
}

/* layer l up to its routing: attention (its K/V rows into the cache), the residual, the
 * post-attention norm (left in xn) and the chosen experts with their weights */
DK_TARGET static void attend(Plan *p, int l, int *routing)
{
    const Dims *d = &p->d;
    const int hd = d->head_dim, qn = d->heads * hd, kn = d->kv_heads * hd, pos = p->position;
    const Layer *L = &p->layer[l];
    p->cur_layer = l;
    p->kcache = p->kv[2 * l];
    p->vcache = p->kv[2 * l + 1];
    rms_norm(p->x, L->ln1, p->xn, d->hidden, d->eps);
    quantize(p->xn, d->hidden, d->block, &p->qa_h);
    parallel(p, task_qkv);
    /* q, k: RMSNorm per head, then RoPE; k and v into the cache at this position */
    const float *cs = p->cos + (size_t)pos * (hd / 2), *sn = p->sin + (size_t)pos * (hd / 2);
    for (int h = 0; h < d->heads; h++) {
        float *q = p->qkv + (size_t)h * hd;
        rms_norm(q, L->qn, q, hd, d->eps);
        rope(q, cs, sn, hd / 2);
    }
    for (int g = 0; g < d->kv_heads; g++) {
        float *k = p->qkv + qn + (size_t)g * hd;
        rms_norm(k, L->kn, k, hd, d->eps);
        rope(k, cs, sn, hd / 2);
        memcpy(p->kcache + ((size_t)g * d->max_context + pos) * hd, k, sizeof(float) * hd);
        memcpy(p->vcache + ((size_t)g * d->max_context + pos) * hd,
               p->qkv + qn + kn + (size_t)g * hd, sizeof(float) * hd);
    }
    parallel(p, task_attention);
    quantize(p->att, qn, d->block, &p->qa_a);
    parallel(p, task_o);
    for (int i = 0; i < d->hidden; i++)
        p->x[i] += p->h[i];
    rms_norm(p->x, L->ln2, p->xn, d->hidden, d->eps);
    parallel(p, task_router);
    float *lg = p->parts;
    for (int t = 1; t < p->pool.nth; t++)
        for (int e = 0; e < d->experts; e++)
            lg[e] += p->parts[(size_t)t * d->experts + e];
    route(p, lg, routing);
}

/* layer l's chosen experts (fc1, fc2 set) on xn, weighted, added to the residual stream */
DK_TARGET static void experts(Plan *p)
{
    quantize(p->xn, p->d.hidden, p->d.block, &p->qa_h);
    parallel(p, task_gate_up);
    parallel(p, task_swiglu);
    parallel(p, task_down);
}

DK_TARGET static void finish(Plan *p, float *logits)
{
    rms_norm(p->x, p->final_norm, p->xn, p->d.hidden, p->d.eps);
    quantize(p->xn, p->d.hidden, p->d.block, &p->qa_h);
    p->logits_out = logits;
    parallel(p, task_head);
}

/* one token, every expert held by the plan */
static void step(Plan *p, const float *embedding, int position, float *logits, int *routing)
{
    const Dims *d = &p->d;
    begin(p, embedding, position);
    for (int l = 0; l < d->layers; l++) {
        attend(p, l, routing + (size_t)l * d->top_k);
        for (int j = 0; j < d->top_k; j++)
            stacked_expert(p, l, p->chosen[j], &p->fc1[j], &p->fc2[j]);
        experts(p);
    }
    finish(p, logits);
}

#endif /* DK_X86 */

/* ------------------------------------------------------------------------------ Python */

#ifndef DK_X86
struct Plan {
    PyObject_HEAD int unused;
};
typedef struct Plan Plan;
#endif

static void plan_dealloc(Plan *p)
{
#ifdef DK_X86
    /* a forked child has none of the threads (and maybe a mutex held at the fork): leave them */
    if (p->started && p->owner == getpid()) {
        atomic_store(&p->pool.quit, 1);
        pthread_mutex_lock(&p->pool.mu);
        pthread_cond_broadcast(&p->pool.cv);
        pthread_mutex_unlock(&p->pool.mu);
        for (int t = 1; t < p->pool.nth; t++)
            pthread_join(p->pool.th[t], NULL);
        pthread_mutex_destroy(&p->pool.mu);
        pthread_cond_destroy(&p->pool.cv);
    }
    for (int i = 0; i < p->nbufs; i++)
        if (p->bufs[i].obj)
            PyBuffer_Release(&p->bufs[i]);
    free(p->bufs);
    free(p->layer);
    free(p->x), free(p->xn), free(p->qkv), free(p->att), free(p->parts), free(p->h);
    free(p->ys), free(p->scores);
    free(p->qa_h.x), free(p->qa_h.sx16), free(p->qa_h.c);
    free(p->qa_a.x), free(p->qa_a.sx16), free(p->qa_a.c);
    if (p->qa_i)
        for (int j = 0; j < p->d.top_k; j++)
            free(p->qa_i[j].x), free(p->qa_i[j].sx16), free(p->qa_i[j].c);
    free(p->qa_i);
#endif
    Py_TYPE(p)->tp_free((PyObject *)p);
}

#ifdef DK_X86
/* buffer i of the plan, checked: `want` bytes (0: absent allowed when may_be_none) */
static const void *take(Plan *p, PyObject *arrays, int i, Py_ssize_t want, int may_be_none,
                        const char *what)
{
    PyObject *o = PyList_GET_ITEM(arrays, i);
    if (o == Py_None) {
        if (may_be_none)
            return NULL;
        PyErr_Format(PyExc_ValueError, "decode plan: %s (array %d) is missing", what, i);
        return (const void *)-1;
    }
    if (PyObject_GetBuffer(o, &p->bufs[i], PyBUF_C_CONTIGUOUS) < 0)
        return (const void *)-1;
    if (p->bufs[i].len != want) {
        PyErr_Format(PyExc_ValueError, "decode plan: %s (array %d) has %zd bytes, want %zd",
                     what, i, p->bufs[i].len, want);
        return (const void *)-1;
    }
    return p->bufs[i].buf;
}

static int qa_alloc(QA *a, int k, int block)
{
    a->x = (int8_t *)aligned_alloc(64, (size_t)k);
    a->sx16 = (float *)malloc(sizeof(float) * (size_t)(k / 8));
    a->c = (float *)malloc(sizeof(float) * (size_t)(k / block));
    a->k = k;
    return a->x && a->sx16 && a->c;
}
#endif

static PyObject *plan_new(PyTypeObject *type, PyObject *args, PyObject *kw)
{
    PyObject *dims, *arrays;
    float eps;
    int threads;
    if (!PyArg_ParseTuple(args, "O!O!fi", &PyTuple_Type, &dims, &PyList_Type, &arrays, &eps,
                          &threads))
        return NULL;
#ifndef DK_X86
    PyErr_SetString(PyExc_RuntimeError, "the decode kernel needs an x86-64 CPU");
    return NULL;
#else
    if (!available()) {
        PyErr_SetString(PyExc_RuntimeError, "the decode kernel needs AVX-512 VNNI");
        return NULL;
    }
    int v[13];
    if (PyTuple_GET_SIZE(dims) != 13) {
        PyErr_SetString(PyExc_ValueError, "decode plan: dims has 13 values");
        return NULL;
    }
    for (int i = 0; i < 13; i++) {
        v[i] = (int)PyLong_AsLong(PyTuple_GET_ITEM(dims, i));
        if (PyErr_Occurred())
            return NULL;
    }
    Dims d = {v[0], v[1], v[2], v[3], v[4], v[5], v[6], v[7], v[8], v[9], v[10], v[11]};
    d.eps = eps;
    int zp = v[12];
    const int qn = d.heads * d.head_dim;
    if (d.layers < 1 || d.hidden % 128 || d.inter % 128 || qn % 128 || d.head_dim % 32 ||
        (d.block != 32 && d.block != 64) || d.kv_heads < 1 || d.heads % d.kv_heads ||
        d.experts < 1 || d.experts > 512 || d.top_k < 1 || d.top_k > 64 ||
        d.top_k > d.experts || d.vocab < 1 || d.max_context < 1 || threads < 1 ||
        threads > MAX_THREADS) {
        PyErr_SetString(PyExc_ValueError, "decode plan: shapes the kernel does not take");
        return NULL;
    }
    d.kb_h = d.hidden / d.block, d.kb_i = d.inter / d.block, d.kb_a = qn / d.block;
    d.zrow_h = (d.kb_h + 1) / 2, d.zrow_i = (d.kb_i + 1) / 2, d.zrow_a = (d.kb_a + 1) / 2;
    const int per_layer = 17, n = 6 + per_layer * d.layers;
    if (PyList_GET_SIZE(arrays) != n) {
        PyErr_Format(PyExc_ValueError, "decode plan: %d arrays, want %d", (int)PyList_GET_SIZE(arrays), n);
        return NULL;
    }
    Plan *p = (Plan *)type->tp_alloc(type, 0);
    if (!p)
        return NULL;
    p->d = d;
    p->zp = zp;
    p->nbufs = n;
    p->bufs = (Py_buffer *)calloc((size_t)n, sizeof(Py_buffer));
    p->layer = (Layer *)calloc((size_t)d.layers, sizeof(Layer));
    if (!p->bufs || !p->layer) {
        Py_DECREF(p);
        return PyErr_NoMemory();
    }
#define TAKE(var, i, bytes, none, what)                                                        \
    do {                                                                                       \
        const void *t_ = take(p, arrays, (i), (Py_ssize_t)(bytes), (none), (what));            \
        if (t_ == (const void *)-1) {                                                          \
            Py_DECREF(p);                                                                      \
            return NULL;                                                                       \
        }                                                                                      \
        var = t_;                                                                              \
    } while (0)
    const size_t H = (size_t)d.hidden, I = (size_t)d.inter, E = (size_t)d.experts;
    const size_t half = (size_t)d.max_context * (d.head_dim / 2) * 4;
    const size_t nqkv = (size_t)qn + 2 * (size_t)d.kv_heads * d.head_dim;
    TAKE(p->cos, 0, half, 0, "cos");
    TAKE(p->sin, 1, half, 0, "sin");
    TAKE(p->final_norm, 2, H * 4, 0, "final norm");
    p->head = (Q4){NULL, NULL, NULL, d.vocab, d.hidden, d.kb_h, d.zrow_h};
    TAKE(p->head.q, 3, (size_t)d.vocab * H / 2, 0, "lm_head packed");
    TAKE(p->head.s, 4, (size_t)d.vocab * d.kb_h * 4, 0, "lm_head scales");
    TAKE(p->head.z, 5, (size_t)d.vocab * d.zrow_h, zp ? 0 : 1, "lm_head zero points");
    /* experts: every layer's stacked in QMoE's layout, or none (given with each layer) */
    p->per_call = PyList_GET_ITEM(arrays, 6 + 11) == Py_None;
    p->interleaved = !p->per_call;
    const int ex_none = p->per_call;
    for (int l = 0; l < d.layers; l++) {
        Layer *L = &p->layer[l];
        const int b = 6 + per_layer * l;
        L->qkv = (Q4){NULL, NULL, NULL, (int)nqkv, d.hidden, d.kb_h, d.zrow_h};
        L->o = (Q4){NULL, NULL, NULL, d.hidden, qn, d.kb_a, d.zrow_a};
        TAKE(L->ln1, b, H * 4, 0, "input norm");
        TAKE(L->qkv.q, b + 1, nqkv * H / 2, 0, "qkv packed");
        TAKE(L->qkv.s, b + 2, nqkv * d.kb_h * 4, 0, "qkv scales");
        TAKE(L->qkv.z, b + 3, nqkv * d.zrow_h, zp ? 0 : 1, "qkv zero points");
        TAKE(L->qn, b + 4, (size_t)d.head_dim * 4, 0, "q norm");
        TAKE(L->kn, b + 5, (size_t)d.head_dim * 4, 0, "k norm");
        TAKE(L->o.q, b + 6, H * qn / 2, 0, "o packed");
        TAKE(L->o.s, b + 7, H * d.kb_a * 4, 0, "o scales");
        TAKE(L->o.z, b + 8, H * d.zrow_a, zp ? 0 : 1, "o zero points");
        TAKE(L->ln2, b + 9, H * 4, 0, "post-attention norm");
        TAKE(L->router, b + 10, H * E * 4, 0, "router");
        TAKE(L->fc1_q, b + 11, E * 2 * I * H / 2, ex_none, "fc1 packed");
        TAKE(L->fc1_s, b + 12, E * 2 * I * d.kb_h * 4, ex_none, "fc1 scales");
        TAKE(L->fc1_z, b + 13, E * 2 * I * d.zrow_h, zp && !ex_none ? 0 : 1, "fc1 zero points");
        TAKE(L->fc2_q, b + 14, E * H * I / 2, ex_none, "fc2 packed");
        TAKE(L->fc2_s, b + 15, E * H * d.kb_i * 4, ex_none, "fc2 scales");
        TAKE(L->fc2_z, b + 16, E * H * d.zrow_i, zp && !ex_none ? 0 : 1, "fc2 zero points");
        if (!ex_none && !(L->fc1_q && L->fc1_s && L->fc2_q && L->fc2_s)) {
            PyErr_SetString(PyExc_ValueError, "decode plan: every layer's experts, or none");
            Py_DECREF(p);
            return NULL;
        }
    }
#undef TAKE
    const size_t kmax = H > (size_t)qn ? H : (size_t)qn;
    p->x = (float *)aligned_alloc(64, H * 4);
    p->xn = (float *)aligned_alloc(64, H * 4);
    p->qkv = (float *)aligned_alloc(64, nqkv * 4);
    p->att = (float *)aligned_alloc(64, (size_t)qn * 4);
    p->parts = (float *)malloc((size_t)threads * E * 4);
    p->h = (float *)aligned_alloc(64, ((size_t)d.top_k * 2 * I > H ? (size_t)d.top_k * 2 * I : H) * 4);
    p->ys = (float *)aligned_alloc(64, (size_t)d.top_k * (H > I ? H : I) * 4);
    p->scores = (float *)malloc((size_t)threads * d.max_context * 4 + 64);
    p->qa_i = (QA *)calloc((size_t)d.top_k, sizeof(QA));
    int ok = p->x && p->xn && p->qkv && p->att && p->parts && p->h && p->ys && p->scores &&
             p->qa_i && qa_alloc(&p->qa_h, (int)kmax, d.block) && qa_alloc(&p->qa_a, qn, d.block);
    for (int j = 0; ok && j < d.top_k; j++)
        ok = qa_alloc(&p->qa_i[j], d.inter, d.block);
    if (!ok) {
        Py_DECREF(p);
        return PyErr_NoMemory();
    }
    Pool *pool = &p->pool;
    pool->nth = threads;
    atomic_init(&pool->gen, 0);
    atomic_init(&pool->pending, 0);
    atomic_init(&pool->quit, 0);
    pthread_mutex_init(&pool->mu, NULL);
    pthread_cond_init(&pool->cv, NULL);
    p->started = 1;
    p->owner = getpid();
    for (int t = 1; t < threads; t++) {
        p->wargs[t] = (WorkerArg){pool, t};
        if (pthread_create(&pool->th[t], NULL, worker, &p->wargs[t]) != 0) {
            pool->nth = t; /* join those started */
            Py_DECREF(p);
            PyErr_SetString(PyExc_RuntimeError, "decode plan: cannot start its threads");
            return NULL;
        }
    }
    return (PyObject *)p;
#endif
}

#ifdef DK_X86
/* the 2 * layers KV cache addresses into the plan */
static int take_kv(Plan *p, PyObject *kv)
{
    if (!PyTuple_Check(kv) || PyTuple_GET_SIZE(kv) != 2 * p->d.layers || p->d.layers > 512) {
        PyErr_Format(PyExc_ValueError, "decode: kv is a tuple of %d addresses", 2 * p->d.layers);
        return 0;
    }
    for (int i = 0; i < 2 * p->d.layers; i++) {
        p->kv[i] = (float *)PyLong_AsVoidPtr(PyTuple_GET_ITEM(kv, i));
        if (!p->kv[i]) {
            if (!PyErr_Occurred())
                PyErr_SetString(PyExc_ValueError, "decode: a null KV cache address");
            return 0;
        }
    }
    return 1;
}

static int check_start(Plan *p, Py_buffer *x, int position)
{
    if (x->len != (Py_ssize_t)p->d.hidden * 4) {
        PyErr_SetString(PyExc_ValueError, "decode: x has the wrong size");
        return 0;
    }
    if (position < 0 || position >= p->d.max_context) {
        PyErr_Format(PyExc_ValueError, "decode: position %d outside the context of %d",
                     position, p->d.max_context);
        return 0;
    }
    return 1;
}
#endif

#define NEED_X86                                                                               \
    PyErr_SetString(PyExc_RuntimeError, "the decode kernel needs an x86-64 CPU");              \
    return NULL;

static PyObject *plan_step(Plan *p, PyObject *args)
{
#ifndef DK_X86
    NEED_X86
#else
    Py_buffer x = {0}, logits = {0}, routing = {0};
    PyObject *kv, *result = NULL;
    int position;
    if (!PyArg_ParseTuple(args, "y*iOw*w*", &x, &position, &kv, &logits, &routing))
        return NULL;
    const Dims *d = &p->d;
    if (p->per_call) {
        PyErr_SetString(PyExc_ValueError, "decode step: this plan takes its experts per layer");
        goto done;
    }
    if (logits.len != (Py_ssize_t)d->vocab * 4 ||
        routing.len != (Py_ssize_t)d->layers * d->top_k * 4) {
        PyErr_SetString(PyExc_ValueError, "decode step: buffers of the wrong size");
        goto done;
    }
    if (!check_start(p, &x, position) || !take_kv(p, kv))
        goto done;
    Py_BEGIN_ALLOW_THREADS
    step(p, (const float *)x.buf, position, (float *)logits.buf, (int *)routing.buf);
    Py_END_ALLOW_THREADS
    result = Py_None;
    Py_INCREF(result);
done:
    PyBuffer_Release(&x);
    PyBuffer_Release(&logits);
    PyBuffer_Release(&routing);
    return result;
#endif
}

static PyObject *plan_begin(Plan *p, PyObject *args)
{
#ifndef DK_X86
    NEED_X86
#else
    Py_buffer x = {0};
    PyObject *kv, *result = NULL;
    int position;
    if (!PyArg_ParseTuple(args, "y*iO", &x, &position, &kv))
        return NULL;
    if (check_start(p, &x, position) && take_kv(p, kv)) {
        begin(p, (const float *)x.buf, position);
        p->cur_layer = -1;
        result = Py_None;
        Py_INCREF(result);
    }
    PyBuffer_Release(&x);
    return result;
#endif
}

static PyObject *plan_attend(Plan *p, PyObject *args)
{
#ifndef DK_X86
    NEED_X86
#else
    Py_buffer routing = {0}, h = {0};
    PyObject *h_obj, *result = NULL;
    int layer;
    if (!PyArg_ParseTuple(args, "iw*O", &layer, &routing, &h_obj))
        return NULL;
    if (h_obj != Py_None && PyObject_GetBuffer(h_obj, &h, PyBUF_WRITABLE | PyBUF_C_CONTIGUOUS) < 0)
        goto done;
    if (layer != p->cur_layer + 1 || layer >= p->d.layers) {
        PyErr_Format(PyExc_ValueError, "decode: layer %d after layer %d", layer, p->cur_layer);
        goto done;
    }
    if (routing.len != (Py_ssize_t)p->d.top_k * 4 ||
        (h.obj && h.len != (Py_ssize_t)p->d.hidden * 4)) {
        PyErr_SetString(PyExc_ValueError, "decode attend: buffers of the wrong size");
        goto done;
    }
    Py_BEGIN_ALLOW_THREADS
    attend(p, layer, (int *)routing.buf);
    Py_END_ALLOW_THREADS
    if (h.obj)
        memcpy(h.buf, p->xn, sizeof(float) * p->d.hidden);
    result = Py_None;
    Py_INCREF(result);
done:
    PyBuffer_Release(&routing);
    if (h.obj)
        PyBuffer_Release(&h);
    return result;
#endif
}

/* experts(layer, [(gate_up packed, scales, zp, down packed, scales, zp)] * top_k): the chosen
 * experts' blobs (the store's layout: fc1 gate rows then up rows), in routing order */
static PyObject *plan_experts(Plan *p, PyObject *args)
{
#ifndef DK_X86
    NEED_X86
#else
    PyObject *list, *result = NULL;
    int layer;
    if (!PyArg_ParseTuple(args, "iO!", &layer, &PyList_Type, &list))
        return NULL;
    const Dims *d = &p->d;
    const int k = d->top_k;
    Py_buffer bufs[6 * 64];
    memset(bufs, 0, sizeof(bufs));
    if (!p->per_call || layer != p->cur_layer || PyList_GET_SIZE(list) != k) {
        PyErr_Format(PyExc_ValueError, "decode experts: layer %d's %d experts, after its "
                     "attend, on a plan without experts", layer, k);
        return NULL;
    }
    const size_t n1 = 2 * (size_t)d->inter, n2 = (size_t)d->hidden;
    const Py_ssize_t want[6] = {(Py_ssize_t)(n1 * d->hidden / 2), (Py_ssize_t)(n1 * d->kb_h * 4),
                                (Py_ssize_t)(n1 * d->zrow_h), (Py_ssize_t)(n2 * d->inter / 2),
                                (Py_ssize_t)(n2 * d->kb_i * 4), (Py_ssize_t)(n2 * d->zrow_i)};
    for (int j = 0; j < k; j++) {
        PyObject *t = PyList_GET_ITEM(list, j);
        if (!PyTuple_Check(t) || PyTuple_GET_SIZE(t) != 6) {
            PyErr_SetString(PyExc_ValueError, "decode experts: a tuple of 6 arrays per expert");
            goto done;
        }
        for (int i = 0; i < 6; i++) {
            PyObject *o = PyTuple_GET_ITEM(t, i);
            const int is_zp = i == 2 || i == 5;
            if (o == Py_None && is_zp && !p->zp)
                continue;
            if (o == Py_None || PyObject_GetBuffer(o, &bufs[6 * j + i], PyBUF_C_CONTIGUOUS) < 0 ||
                bufs[6 * j + i].len != want[i]) {
                if (!PyErr_Occurred())
                    PyErr_Format(PyExc_ValueError, "decode experts: expert %d's array %d is "
                                 "not the size of this model's", j, i);
                goto done;
            }
        }
        Py_buffer *b = &bufs[6 * j];
        p->fc1[j] = (Q4){b[0].buf, b[1].buf, b[2].obj ? b[2].buf : NULL, (int)n1, d->hidden,
                         d->kb_h, d->zrow_h};
        p->fc2[j] = (Q4){b[3].buf, b[4].buf, b[5].obj ? b[5].buf : NULL, (int)n2, d->inter,
                         d->kb_i, d->zrow_i};
    }
    Py_BEGIN_ALLOW_THREADS
    experts(p);
    Py_END_ALLOW_THREADS
    result = Py_None;
    Py_INCREF(result);
done:
    for (int i = 0; i < 6 * k; i++)
        if (bufs[i].obj)
            PyBuffer_Release(&bufs[i]);
    return result;
#endif
}

static PyObject *plan_finish(Plan *p, PyObject *args)
{
#ifndef DK_X86
    NEED_X86
#else
    Py_buffer logits = {0};
    PyObject *result = NULL;
    if (!PyArg_ParseTuple(args, "w*", &logits))
        return NULL;
    if (logits.len != (Py_ssize_t)p->d.vocab * 4 || p->cur_layer != p->d.layers - 1) {
        PyErr_SetString(PyExc_ValueError, "decode finish: logits of the wrong size, or "
                        "layers left");
    } else {
        Py_BEGIN_ALLOW_THREADS
        finish(p, (float *)logits.buf);
        Py_END_ALLOW_THREADS
        result = Py_None;
        Py_INCREF(result);
    }
    PyBuffer_Release(&logits);
    return result;
#endif
}

static PyMethodDef plan_methods[] = {
    {"step", (PyCFunction)plan_step, METH_VARARGS,
     "step(x, position, kv, logits, routing): one token. x: float32 [hidden], its embedding; "
     "kv: 2 * layers addresses of float32 [kv_heads, max_context, head_dim] caches (key, "
     "value per layer), the token's rows written at position; logits: float32 [vocab] "
     "(written); routing: int32 [layers, top_k] (written: each layer's experts)"},
    {"begin", (PyCFunction)plan_begin, METH_VARARGS,
     "begin(x, position, kv): a token taken layer by layer (a plan without experts)"},
    {"attend", (PyCFunction)plan_attend, METH_VARARGS,
     "attend(layer, routing, h): the layer up to its routing; routing: int32 [top_k] "
     "(written); h: float32 [hidden] or None (written: the post-attention norm's output)"},
    {"experts", (PyCFunction)plan_experts, METH_VARARGS,
     "experts(layer, blobs): the layer's chosen experts, a tuple of 6 arrays each"},
    {"finish", (PyCFunction)plan_finish, METH_VARARGS, "finish(logits): the head"},
    {NULL, NULL, 0, NULL}};

static PyTypeObject PlanType = {
    PyVarObject_HEAD_INIT(NULL, 0).tp_name = "qcoder_ds.runtime._decode_kernel.Plan",
    .tp_basicsize = sizeof(Plan),
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_doc = "Plan(dims, arrays, eps, threads): a resident Qwen3-MoE's weights and threads "
              "for one-token decode steps (see qcoder_ds/runtime/decode_kernel.py)",
    .tp_new = plan_new,
    .tp_dealloc = (destructor)plan_dealloc,
    .tp_methods = plan_methods,
};

static PyObject *py_available(PyObject *self, PyObject *noargs)
{
    return PyBool_FromLong(available());
}

static PyMethodDef methods[] = {
    {"available", py_available, METH_NOARGS, "whether this CPU runs the decode kernel"},
    {NULL, NULL, 0, NULL}};

static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "_decode_kernel",
                                    "One-token decode steps of a resident Qwen3-MoE.", -1,
                                    methods};

PyMODINIT_FUNC PyInit__decode_kernel(void)
{
    if (PyType_Ready(&PlanType) < 0)
        return NULL;
    PyObject *m = PyModule_Create(&module);
    if (!m)
        return NULL;
    Py_INCREF(&PlanType);
    if (PyModule_AddObject(m, "Plan", (PyObject *)&PlanType) < 0) {
        Py_DECREF(&PlanType);
        Py_DECREF(m);
        return NULL;
    }
    return m;
}
