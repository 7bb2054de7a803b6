/* One mixture-of-experts expert, y = down(SiLU(gate(x)) * up(x)), computed straight from its
 * blob in the expert store: block-quantized int4 or int8 weights in ONNX Runtime's
 * MatMulNBits layout (qcoder_ds/runtime/quantize.py), with zero points or symmetric.
 *
 * Why: an ONNX Runtime session per expert must prepack its weights when it is built (~2.5 ms
 * of a ~4.5 ms miss at Qwen3-Coder-30B-A3B's expert shape), and keeps a copy of them beside
 * the blob (2.4x its bytes). Run from the blob, a miss is a read and a resident expert costs
 * its blob. The arithmetic is MatMulNBits' int8 path (accuracy_level 4): each row of the
 * activations is quantized to int8 per block of the weights (scale = max |x| / 127), the
 * block's dot product is exact in int32, and the zero point comes off as z * sum(x_q). An
 * export made with a lower accuracy_level gets fp32 activations, as MatMulNBits gives it.
 *
 * expert(x, out, gate_up..., down..., hidden, inter, block, bits, int8_acts, path)
 *   x      float32 [m, hidden]              out  float32 [m, hidden] (written)
 *   gate_up: packed uint8, scales float32, zp uint8 or None   [2 * inter rows, hidden]
 *   down:    packed uint8, scales float32, zp uint8 or None   [hidden rows, inter]
 * The GIL is released while it computes, so two threads run two experts at once.
 *
 * AVX-512 VNNI and AVX2 paths (chosen at run time) and a portable one; on a given machine
 * every expert always takes the same path, so a cache never changes the numbers.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#if (defined(__x86_64__) || defined(__i386__)) && (defined(__GNUC__) || defined(__clang__))
#define QK_X86 1
#include <immintrin.h>
#endif

typedef struct {
    const uint8_t *packed; /* [n][kb][block * bits / 8] */
    const float *scales;   /* [n][kb] */
    const uint8_t *zp;     /* [n][zp_row] or NULL: symmetric, zero point 2^(bits-1) */
    int n, k, kb, block, bits, zp_row;
} QMatrix;

/* Activations quantized for one matrix: per row kp = kb * block int8 values (zero padded),
 * each 64-value chunk stored as its 32 even then its 32 odd values (the low and high nibbles
 * of 32 packed int4 bytes), a scale and the sum of the int8 values per block. */
typedef struct {
    int8_t *q;
    float *scale;
    int32_t *sum;
    int8_t *row; /* one row in K order, before the kernel's reordering */
    int m, kb, block, kp;
} QActs;

static int zero_point(const QMatrix *w, int row, int b)
{
    if (!w->zp)
        return 1 << (w->bits - 1);
    const uint8_t *z = w->zp + (size_t)row * w->zp_row;
    if (w->bits == 8)
        return z[b];
    return (z[b >> 1] >> ((b & 1) * 4)) & 15;
}

static void quantize_acts(const float *x, int m, int k, QActs *a)
{
    int block = a->block, kb = a->kb, kp = a->kp;
    int8_t *tmp = a->row;
    for (int r = 0; r < m; r++) {
        const float *xr = x + (size_t)r * k;
        int8_t *qr = a->q + (size_t)r * kp;
        for (int b = 0; b < kb; b++) {
            float amax = 0.f;
            for (int j = b * block; j < (b + 1) * block && j < k; j++) {
                float v = fabsf(xr[j]);
                if (v > amax)
                    amax = v;
            }
            float s = amax / 127.f;
            float inv = s > 0.f ? 1.f / s : 0.f;
            int32_t sum = 0;
            for (int j = b * block; j < (b + 1) * block; j++) {
                int v = 0;
                if (j < k) {
                    v = (int)lrintf(xr[j] * inv);
                    v = v > 127 ? 127 : (v < -127 ? -127 : v);
                }
                tmp[j] = (int8_t)v;
                sum += v;
            }
            a->scale[(size_t)r * kb + b] = s;
            a->sum[(size_t)r * kb + b] = sum;
        }
        /* the kernel's order: each chunk of 64 as evens then odds (a tail under 64 as is) */
        int c = 0;
        for (; c + 64 <= kp; c += 64)
            for (int j = 0; j < 32; j++) {
                qr[c + j] = tmp[c + 2 * j];
                qr[c + 32 + j] = tmp[c + 2 * j + 1];
            }
        for (int j = c; j < kp; j++)
            qr[j] = tmp[j];
    }
}

/* int8 value of activation j (in K order) of row r, whatever the storage order */
static inline int act(const QActs *a, int r, int j)
{
    const int8_t *qr = a->q + (size_t)r * a->kp;
    int c = j & ~63;
    if (c + 64 <= a->kp) {
        int t = j - c;
        return qr[c + (t & 1 ? 32 : 0) + (t >> 1)];
    }
    return qr[j];
}

/* y[r][i] for rows i in [i0, i1): the portable path */
static void matmul_portable(const QMatrix *w, const QActs *a, float *y, int i0, int i1)
{
    int kb = w->kb, block = w->block, m = a->m;
    int bytes = block * w->bits / 8;
    for (int i = i0; i < i1; i++) {
        for (int r = 0; r < m; r++) {
            float acc = 0.f;
            for (int b = 0; b < kb; b++) {
                const uint8_t *p = w->packed + ((size_t)i * kb + b) * bytes;
                int32_t dot = 0;
                if (w->bits == 4) {
                    for (int j = 0; j < block / 2; j++) {
                        dot += (p[j] & 15) * act(a, r, b * block + 2 * j);
                        dot += (p[j] >> 4) * act(a, r, b * block + 2 * j + 1);
                    }
                } else {
                    for (int j = 0; j < block; j++)
                        dot += p[j] * act(a, r, b * block + j);
                }
                dot -= zero_point(w, i, b) * a->sum[(size_t)r * kb + b];
                acc += (float)dot * (w->scales[(size_t)i * kb + b] * a->scale[(size_t)r * kb + b]);
            }
            y[(size_t)r * w->n + i] = acc;
        }
    }
}

/* fp32 activations (an export made with accuracy_level below 4): each weight dequantized,
 * (q - z) * scale, and multiplied in float, as MatMulNBits does at those levels. */
static void matmul_float(const QMatrix *w, const float *x, int m, float *y)
{
    int kb = w->kb, block = w->block, k = w->k;
    int bytes = block * w->bits / 8;
    for (int i = 0; i < w->n; i++) {
        for (int r = 0; r < m; r++) {
            const float *xr = x + (size_t)r * k;
            float acc = 0.f;
            for (int b = 0; b < kb; b++) {
                const uint8_t *p = w->packed + ((size_t)i * kb + b) * bytes;
                const float s = w->scales[(size_t)i * kb + b];
                const int z = zero_point(w, i, b);
                for (int j = 0; j < block && b * block + j < k; j++) {
                    int qv = w->bits == 4 ? (p[j >> 1] >> ((j & 1) * 4)) & 15 : p[j];
                    acc += (float)(qv - z) * s * xr[b * block + j];
                }
            }
            y[(size_t)r * w->n + i] = acc;
        }
    }
}

#ifdef QK_X86
__attribute__((target("avx2,fma"))) static inline float hsum8(__m256 v)
{
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    s = _mm_add_ss(s, _mm_movehdup_ps(s));
    return _mm_cvtss_f32(s);
}

/* int4 in blocks of 32 or 64, kp a multiple of 64: y[r][i] for every activation row r and
 * weight row i, weight row by weight row (its ~1 KB stays in L1 while every activation row
 * takes it). One dot product: a group of 8 blocks at a time, each 64-weight chunk's int32
 * lanes summed across (hadd) into one lane per block, the zero points off in int32 as
 * z * sum(x_q) for the 8 blocks at once, one multiply-add for their 8 scales; blocks past
 * the last whole group one chunk at a time. */
#define QK_MATMUL_BODY(DOT)                                                                   \
    const int kb = w->kb, kp = a->kp, b64 = w->block == 64;                                   \
    const __m256i low = _mm256_set1_epi8(0x0F);                                               \
    const __m256i shifts = _mm256_setr_epi32(0, 4, 8, 12, 16, 20, 24, 28);                    \
    const __m256i nib = _mm256_set1_epi32(15);                                                \
    const __m256i order32 = _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7);                       \
    const int chunks = kp / 64, per_group = b64 ? 8 : 4, groups = chunks / per_group;          \
    for (int i = 0; i < w->n; i++) {                                                          \
        const uint8_t *p = w->packed + (size_t)i * kb * (w->block / 2);                      \
        const float *sw = w->scales + (size_t)i * kb;                                         \
        const uint8_t *zp = w->zp ? w->zp + (size_t)i * w->zp_row : NULL;                    \
        for (int r = 0; r < a->m; r++) {                                                      \
            const int8_t *xq = a->q + (size_t)r * kp;                                         \
            const float *xs = a->scale + (size_t)r * kb;                                      \
            const int32_t *xsum = a->sum + (size_t)r * kb;                                    \
            __m256 acc = _mm256_setzero_ps();                                                 \
            for (int g = 0; g < groups; g++) {                                                \
                __m256i v[8];                                                                 \
                const int c0 = g * per_group;                                                 \
                for (int j = 0; j < per_group; j++) {                                         \
                    const int c = c0 + j;                                                     \
                    const __m256i bytes = _mm256_loadu_si256((const __m256i *)(p + 32 * c)); \
                    const __m256i lo = _mm256_and_si256(bytes, low);                          \
                    const __m256i hi = _mm256_and_si256(_mm256_srli_epi16(bytes, 4), low);    \
                    const __m256i xe = _mm256_loadu_si256((const __m256i *)(xq + 64 * c));   \
                    const __m256i xo = _mm256_loadu_si256((const __m256i *)(xq + 64 * c + 32)); \
                    v[j] = DOT(lo, xe, hi, xo);                                               \
                }                                                                             \
                __m256i blocks;                                                               \
                if (b64) {                                                                    \
                    const __m256i u0 = _mm256_hadd_epi32(_mm256_hadd_epi32(v[0], v[1]),       \
                                                         _mm256_hadd_epi32(v[2], v[3]));      \
                    const __m256i u1 = _mm256_hadd_epi32(_mm256_hadd_epi32(v[4], v[5]),       \
                                                         _mm256_hadd_epi32(v[6], v[7]));      \
                    blocks = _mm256_add_epi32(_mm256_permute2x128_si256(u0, u1, 0x20),        \
                                              _mm256_permute2x128_si256(u0, u1, 0x31));       \
                } else {                                                                      \
                    const __m256i u = _mm256_hadd_epi32(_mm256_hadd_epi32(v[0], v[1]),        \
                                                        _mm256_hadd_epi32(v[2], v[3]));       \
                    blocks = _mm256_permutevar8x32_epi32(u, order32);                         \
                }                                                                             \
                const int b = 8 * g;                                                          \
                __m256i z;                                                                    \
                if (zp) {                                                                     \
                    int32_t four;                                                             \
                    memcpy(&four, zp + b / 2, 4);                                             \
                    z = _mm256_and_si256(_mm256_srlv_epi32(_mm256_set1_epi32(four), shifts),  \
                                         nib);                                                \
                } else {                                                                      \
                    z = _mm256_set1_epi32(8);                                                 \
                }                                                                             \
                const __m256i sums = _mm256_loadu_si256((const __m256i *)(xsum + b));        \
                blocks = _mm256_sub_epi32(blocks, _mm256_mullo_epi32(z, sums));               \
                const __m256 scale = _mm256_mul_ps(_mm256_loadu_ps(sw + b),                   \
                                                   _mm256_loadu_ps(xs + b));                  \
                acc = _mm256_fmadd_ps(_mm256_cvtepi32_ps(blocks), scale, acc);                \
            }                                                                                 \
            float tail = 0.f;                                                                 \
            for (int c = groups * per_group; c < chunks; c++) {                               \
                const __m256i bytes = _mm256_loadu_si256((const __m256i *)(p + 32 * c));     \
                const __m256i lo = _mm256_and_si256(bytes, low);                              \
                const __m256i hi = _mm256_and_si256(_mm256_srli_epi16(bytes, 4), low);        \
                const __m256i xe = _mm256_loadu_si256((const __m256i *)(xq + 64 * c));       \
                const __m256i xo = _mm256_loadu_si256((const __m256i *)(xq + 64 * c + 32));  \
                int32_t lanes[8];                                                             \
                _mm256_storeu_si256((__m256i *)lanes, DOT(lo, xe, hi, xo));                   \
                const int nb = b64 ? 1 : 2;                                                   \
                for (int t = 0; t < nb; t++) {                                                \
                    const int b = c * nb + t, span = 8 / nb;                                  \
                    int32_t dot = 0;                                                          \
                    for (int l = t * span; l < (t + 1) * span; l++)                           \
                        dot += lanes[l];                                                      \
                    const int zb = zp ? (zp[b >> 1] >> ((b & 1) * 4)) & 15 : 8;               \
                    tail += (float)(dot - zb * xsum[b]) * (sw[b] * xs[b]);                    \
                }                                                                             \
            }                                                                                 \
            y[(size_t)r * w->n + i] = hsum8(acc) + tail;                                      \
        }                                                                                     \
    }

__attribute__((target("avx2,fma"))) static inline __m256i dot_avx2(__m256i lo, __m256i xe,
                                                                     __m256i hi, __m256i xo)
{
    const __m256i s16 = _mm256_add_epi16(_mm256_maddubs_epi16(lo, xe),
                                         _mm256_maddubs_epi16(hi, xo));
    return _mm256_madd_epi16(s16, _mm256_set1_epi16(1));
}

__attribute__((target("avx2,fma"))) static void matmul_q4_avx2(const QMatrix *w,
                                                                 const QActs *a, float *y)
{
    QK_MATMUL_BODY(dot_avx2)
}

/* The same with AVX-512 VNNI's u8 x s8 dot product on 256-bit registers (one instruction
 * where AVX2 takes three). */
__attribute__((target("avx2,fma,avx512vl,avx512vnni"))) static inline __m256i
dot_vnni(__m256i lo, __m256i xe, __m256i hi, __m256i xo)
{
    return _mm256_dpbusd_epi32(_mm256_dpbusd_epi32(_mm256_setzero_si256(), lo, xe), hi, xo);
}

__attribute__((target("avx2,fma,avx512vl,avx512vnni"))) static void
matmul_q4_vnni(const QMatrix *w, const QActs *a, float *y)
{
    QK_MATMUL_BODY(dot_vnni)
}

static int have_vnni(void)
{
    static int known = -1;
    if (known < 0) {
        __builtin_cpu_init();
        known = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") &&
                __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512vnni");
    }
    return known;
}

static int have_avx2(void)
{
    static int known = -1;
    if (known < 0) {
        __builtin_cpu_init();
        known = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
    }
    return known;
}
#endif

static void matmul(const QMatrix *w, const QActs *a, float *y, int path)
{
#ifdef QK_X86
    if (path != 1 && w->bits == 4 && (w->block == 32 || w->block == 64) && a->kp % 64 == 0 &&
        have_avx2()) {
        if (have_vnni() && path != 2)
            matmul_q4_vnni(w, a, y);
        else
            matmul_q4_avx2(w, a, y);
        return;
    }
#endif
    matmul_portable(w, a, y, 0, w->n);
}

static int acts_alloc(QActs *a, int m, int k, int block)
{
    a->m = m;
    a->block = block;
    a->kb = (k + block - 1) / block;
    a->kp = a->kb * block;
    a->q = (int8_t *)malloc((size_t)m * a->kp);
    a->scale = (float *)malloc(sizeof(float) * (size_t)m * a->kb);
    a->sum = (int32_t *)malloc(sizeof(int32_t) * (size_t)m * a->kb);
    a->row = (int8_t *)malloc((size_t)a->kp);
    return a->q && a->scale && a->sum && a->row;
}

static void acts_free(QActs *a)
{
    free(a->q);
    free(a->scale);
    free(a->sum);
    free(a->row);
}

/* Checks one matrix's buffers against its shape; 0 and a Python error when they disagree. */
static int check_matrix(QMatrix *w, Py_buffer *packed, Py_buffer *scales, Py_buffer *zp,
                        int n, int k, int block, int bits, const char *name)
{
    w->n = n;
    w->k = k;
    w->block = block;
    w->bits = bits;
    w->kb = (k + block - 1) / block;
    w->zp_row = bits == 4 ? (w->kb + 1) / 2 : w->kb;
    Py_ssize_t want_packed = (Py_ssize_t)n * w->kb * (block * bits / 8);
    Py_ssize_t want_scales = (Py_ssize_t)n * w->kb * (Py_ssize_t)sizeof(float);
    Py_ssize_t want_zp = (Py_ssize_t)n * w->zp_row;
    if (packed->len != want_packed || scales->len != want_scales ||
        (zp->buf && zp->len != want_zp)) {
        PyErr_Format(PyExc_ValueError,
                     "%s: weights do not match [%d, %d] in blocks of %d at %d bits "
                     "(packed %zd bytes, want %zd; scales %zd, want %zd; zero points %zd, "
                     "want %zd)",
                     name, n, k, block, bits, packed->len, want_packed, scales->len,
                     want_scales, zp->buf ? zp->len : (Py_ssize_t)0, want_zp);
        return 0;
    }
    w->packed = (const uint8_t *)packed->buf;
    w->scales = (const float *)scales->buf;
    w->zp = (const uint8_t *)zp->buf;
    return 1;
}

static PyObject *expert(PyObject *self, PyObject *args)
{
    Py_buffer x = {0}, out = {0}, gp = {0}, gs = {0}, gz = {0}, dp = {0}, ds = {0}, dz = {0};
    PyObject *gz_obj, *dz_obj;
    int hidden, inter, block, bits, int8_acts = 1, path = 0; /* 1: portable, 2: no VNNI */
    PyObject *result = NULL;
    if (!PyArg_ParseTuple(args, "y*w*y*y*Oy*y*Oiiii|pi", &x, &out, &gp, &gs, &gz_obj, &dp, &ds,
                          &dz_obj, &hidden, &inter, &block, &bits, &int8_acts, &path))
        return NULL;
    if (gz_obj != Py_None && PyObject_GetBuffer(gz_obj, &gz, PyBUF_SIMPLE) < 0)
        goto done;
    if (dz_obj != Py_None && PyObject_GetBuffer(dz_obj, &dz, PyBUF_SIMPLE) < 0)
        goto done;
    if ((bits != 4 && bits != 8) || block < 16 || (block & (block - 1)) || hidden <= 0 ||
        inter <= 0) {
        PyErr_Format(PyExc_ValueError, "expert: bits %d, block %d, hidden %d, inter %d",
                     bits, block, hidden, inter);
        goto done;
    }
    if (x.len % ((Py_ssize_t)hidden * 4) || out.len != x.len) {
        PyErr_Format(PyExc_ValueError, "expert: x has %zd bytes, out %zd: not rows of %d floats",
                     x.len, out.len, hidden);
        goto done;
    }
    QMatrix gu, down;
    if (!check_matrix(&gu, &gp, &gs, &gz, 2 * inter, hidden, block, bits, "gate_up") ||
        !check_matrix(&down, &dp, &ds, &dz, hidden, inter, block, bits, "down"))
        goto done;
    int m = (int)(x.len / ((Py_ssize_t)hidden * 4));
    if (m == 0) { /* no rows: nothing to compute (malloc(0) may be NULL, not out of memory) */
        result = Py_None;
        Py_INCREF(result);
        goto done;
    }
    QActs a1 = {0}, a2 = {0};
    float *h = (float *)malloc(sizeof(float) * (size_t)m * 2 * inter);
    int ok = h && acts_alloc(&a1, m, hidden, block) && acts_alloc(&a2, m, inter, block);
    if (ok) {
        Py_BEGIN_ALLOW_THREADS
        if (int8_acts) {
            quantize_acts((const float *)x.buf, m, hidden, &a1);
            matmul(&gu, &a1, h, path);
        } else {
            matmul_float(&gu, (const float *)x.buf, m, h);
        }
        /* h [m, 2*inter] = [gate | up] -> act [m, inter] = SiLU(gate) * up, in place */
        for (int r = 0; r < m; r++) {
            float *row = h + (size_t)r * 2 * inter;
            float *dst = h + (size_t)r * inter;
            for (int j = 0; j < inter; j++) {
                float g = row[j], u = row[inter + j];
                dst[j] = g / (1.f + expf(-g)) * u;
            }
        }
        if (int8_acts) {
            quantize_acts(h, m, inter, &a2);
            matmul(&down, &a2, (float *)out.buf, path);
        } else {
            matmul_float(&down, h, m, (float *)out.buf);
        }
        Py_END_ALLOW_THREADS
        result = Py_None;
        Py_INCREF(result);
    } else {
        PyErr_NoMemory();
    }
    free(h);
    acts_free(&a1);
    acts_free(&a2);
done:
    PyBuffer_Release(&x);
    PyBuffer_Release(&out);
    PyBuffer_Release(&gp);
    PyBuffer_Release(&gs);
    PyBuffer_Release(&dp);
    PyBuffer_Release(&ds);
    if (gz.buf)
        PyBuffer_Release(&gz);
    if (dz.buf)
        PyBuffer_Release(&dz);
    return result;
}

static PyObject *simd(PyObject *self, PyObject *noargs)
{
#ifdef QK_X86
    if (have_vnni())
        return PyUnicode_FromString("avx512-vnni");
    if (have_avx2())
        return PyUnicode_FromString("avx2");
#endif
    return PyUnicode_FromString("portable");
}

static PyMethodDef methods[] = {
    {"expert", expert, METH_VARARGS,
     "expert(x, out, gate_up_packed, gate_up_scales, gate_up_zp, down_packed, down_scales, "
     "down_zp, hidden, inter, block, bits, int8_acts=True, path=0): "
     "out = down(SiLU(gate(x)) * up(x)); int8_acts: activations quantized to int8 per block "
     "(MatMulNBits' accuracy_level 4), else fp32; path: 0 the best this CPU has, 1 the portable one even "
     "where AVX2 is there, 2 AVX2 without VNNI (tests)"},
    {"simd", simd, METH_NOARGS, "the instruction set the int4 kernel runs with here"},
    {NULL, NULL, 0, NULL}};

static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "_expert_kernel",
                                    "Mixture-of-experts experts run from their int4/int8 blobs.",
                                    -1, methods};

PyMODINIT_FUNC PyInit__expert_kernel(void) { return PyModule_Create(&module); }
