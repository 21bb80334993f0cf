/* head_dot: out[e, a, h] = sum_d z[e, pos[e, a], h, d] * table[idx[e, a], h, d] in float64.

Every product of a float16 or float32 value with a float32 value is exact in float64, so
fused or not, each step rounds only the sum. The sum over d runs in 4 lanes (d % 4), each in order
of d, then (lane0 + lane1) + (lane2 + lane3): a fixed order that head_dot.py's numpy fallback
repeats bit for bit. */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>
#include <string.h>

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#include <immintrin.h>
#define HAVE_X86 1
#endif

static inline double half_to_double(uint16_t h) {
    /* exact: a normal float16 rebiased into a double's exponent, a subnormal scaled by 2**-24 */
    uint64_t sign = (uint64_t)(h >> 15) << 63, exp = (h >> 10) & 0x1F, man = h & 0x3FF, bits;
    double v;
    if (exp == 0) {
        v = (double)man * 0x1p-24;
        memcpy(&bits, &v, 8);
        bits |= sign;
    } else if (exp == 31) bits = sign | 0x7FF0000000000000ull | (man << 42);   /* inf, NaN */
    else bits = sign | ((exp + 1008) << 52) | (man << 42);
    memcpy(&v, &bits, 8);
    return v;
}

/* Prefetch the z rows of example e + AHEAD at answer a: a chunk just decoded is mostly out of cache, and each
   example's answer rows are a short run, so the hardware prefetcher alone left the loop waiting on memory (an
   addition or list_update hook_z: 1.0-1.2 against 0.4-0.5 ms). */
#define AHEAD 8
#define PREFETCH(z, e, a) do { \
        if ((e) + AHEAD < E) { \
            const char *next_ = (const char *)((z) + ((((e) + AHEAD) * P + pos[((e) + AHEAD) * A + (a)]) * H) * D); \
            for (Py_ssize_t b_ = 0; b_ < (Py_ssize_t)(H * D * sizeof(*(z))); b_ += 64) __builtin_prefetch(next_ + b_); \
        } \
    } while (0)

/* one output: z row (D values), table row (D doubles) */
static inline double dot_half(const uint16_t *z, const float *t, Py_ssize_t D) {
    double acc[4] = {0.0, 0.0, 0.0, 0.0};
    for (Py_ssize_t d = 0; d < D; d++) acc[d & 3] += half_to_double(z[d]) * (double)t[d];
    return (acc[0] + acc[1]) + (acc[2] + acc[3]);
}

static inline double dot_float(const float *z, const float *t, Py_ssize_t D) {
    double acc[4] = {0.0, 0.0, 0.0, 0.0};
    for (Py_ssize_t d = 0; d < D; d++) acc[d & 3] += (double)z[d] * (double)t[d];
    return (acc[0] + acc[1]) + (acc[2] + acc[3]);
}

#ifdef HAVE_X86
#define AVX2_F16C __attribute__((target("avx2,f16c,fma")))

/* dot_half and dot_float in 4-wide registers: lane k of `acc` is acc[k] above, adding in the same order */
AVX2_F16C static inline double dot_half_avx2(const uint16_t *z, const float *t, Py_ssize_t D) {
    __m256d acc = _mm256_setzero_pd();
    Py_ssize_t d = 0;
    for (; d + 8 <= D; d += 8) {
        __m256 f = _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(z + d)));
        acc = _mm256_fmadd_pd(_mm256_cvtps_pd(_mm256_castps256_ps128(f)), _mm256_cvtps_pd(_mm_loadu_ps(t + d)), acc);
        acc = _mm256_fmadd_pd(_mm256_cvtps_pd(_mm256_extractf128_ps(f, 1)), _mm256_cvtps_pd(_mm_loadu_ps(t + d + 4)), acc);
    }
    double lane[4];
    _mm256_storeu_pd(lane, acc);
    for (; d < D; d++) lane[d & 3] += half_to_double(z[d]) * (double)t[d];
    return (lane[0] + lane[1]) + (lane[2] + lane[3]);
}

AVX2_F16C static inline double dot_float_avx2(const float *z, const float *t, Py_ssize_t D) {
    __m256d acc = _mm256_setzero_pd();
    Py_ssize_t d = 0;
    for (; d + 4 <= D; d += 4)
        acc = _mm256_fmadd_pd(_mm256_cvtps_pd(_mm_loadu_ps(z + d)), _mm256_cvtps_pd(_mm_loadu_ps(t + d)), acc);
    double lane[4];
    _mm256_storeu_pd(lane, acc);
    for (; d < D; d++) lane[d & 3] += (double)z[d] * (double)t[d];
    return (lane[0] + lane[1]) + (lane[2] + lane[3]);
}
#endif

/* NAME: out[e, a, h] = DOT(z row at pos[e, a], table row idx[e, a], head h) for every answer, z of type T */
#define ROWS(ATTR, NAME, T, DOT) \
    ATTR static void NAME(const T *z, const int64_t *pos, const int64_t *idx, const float *table, double *out, \
                          Py_ssize_t E, Py_ssize_t A, Py_ssize_t P, Py_ssize_t H, Py_ssize_t D) { \
        for (Py_ssize_t e = 0; e < E; e++) \
            for (Py_ssize_t a = 0; a < A; a++) { \
                const T *zr = z + ((e * P + pos[e * A + a]) * H) * D; \
                const float *tr = table + idx[e * A + a] * H * D; \
                double *o = out + (e * A + a) * H; \
                PREFETCH(z, e, a); \
                for (Py_ssize_t h = 0; h < H; h++) o[h] = DOT(zr + h * D, tr + h * D, D); \
            } \
    }

ROWS(, rows_half, uint16_t, dot_half)
ROWS(, rows_float, float, dot_float)
#ifdef HAVE_X86
ROWS(AVX2_F16C, rows_half_avx2, uint16_t, dot_half_avx2)
ROWS(AVX2_F16C, rows_float_avx2, float, dot_float_avx2)
#endif

/* whether a buffer's struct format is the one-letter code `c` in this machine's byte order ('<' or '>' only where
   that is this machine's: numpy writes '<f' for some little-endian float32 arrays) */
static int format_is(const char *f, const char *codes) {
    const uint16_t one = 1;
    char native = *(const char *)&one ? '<' : '>';
    if (!f) return 0;
    if (*f == '@' || *f == '=' || *f == native) f++;
    return f[0] != 0 && f[1] == 0 && strchr(codes, f[0]) != NULL;
}

static int fast = -1; /* 1: this CPU has AVX2, F16C and FMA */

/* head_dot(z, pos, idx, table, out, vector): z [E, P, H, D] float16 ('e') or float32 ('f'); pos, idx
   [E, A] int64 ('q' or 'l'); table [R, H, D] float32; out [E, A, H] float64, writable; all C-contiguous.
   Every index is checked before the loop. vector: use the AVX2 path where the CPU has it. */
static PyObject *head_dot(PyObject *self, PyObject *args) {
    PyObject *oz, *opos, *oidx, *otab, *oout;
    int vector = 1;
    if (!PyArg_ParseTuple(args, "OOOOO|p", &oz, &opos, &oidx, &otab, &oout, &vector)) return NULL;
    Py_buffer z, pos, idx, tab, out;
    int flags = PyBUF_C_CONTIGUOUS | PyBUF_FORMAT;
    if (PyObject_GetBuffer(oz, &z, flags) < 0) return NULL;
    if (PyObject_GetBuffer(opos, &pos, flags) < 0) { PyBuffer_Release(&z); return NULL; }
    if (PyObject_GetBuffer(oidx, &idx, flags) < 0) { PyBuffer_Release(&z); PyBuffer_Release(&pos); return NULL; }
    if (PyObject_GetBuffer(otab, &tab, flags) < 0) {
        PyBuffer_Release(&z); PyBuffer_Release(&pos); PyBuffer_Release(&idx); return NULL;
    }
    if (PyObject_GetBuffer(oout, &out, flags | PyBUF_WRITABLE) < 0) {
        PyBuffer_Release(&z); PyBuffer_Release(&pos); PyBuffer_Release(&idx); PyBuffer_Release(&tab); return NULL;
    }
    PyObject *result = NULL;
    const char *err = NULL;
    int64_t *own = NULL;
    int nomem = 0;
    int half = z.itemsize == 2 && format_is(z.format, "e"), single = z.itemsize == 4 && format_is(z.format, "f");
    int i64 = pos.itemsize == 8 && idx.itemsize == 8 && format_is(pos.format, "ql") && format_is(idx.format, "ql");
    if (!(half || single) || z.ndim != 4) err = "z must be a [example, pos, head, d_head] float16 or float32 array";
    else if (!i64 || pos.ndim != 2 || idx.ndim != 2) err = "pos and idx must be [example, answer] int64 arrays";
    else if (tab.ndim != 3 || tab.itemsize != 4 || !format_is(tab.format, "f"))
        err = "table must be a [row, head, d_head] float32 array";
    else if (out.ndim != 3 || out.itemsize != 8 || !format_is(out.format, "d"))
        err = "out must be an [example, answer, head] float64 array";
    if (!err) {
        Py_ssize_t E = z.shape[0], P = z.shape[1], H = z.shape[2], D = z.shape[3], A = pos.shape[1];
        Py_ssize_t R = tab.shape[0];
        if (pos.shape[0] != E || idx.shape[0] != E || idx.shape[1] != A) err = "pos and idx must be [example, answer] of z's examples";
        else if (tab.shape[1] != H || tab.shape[2] != D) err = "table's [head, d_head] must be z's";
        else if (out.shape[0] != E || out.shape[1] != A || out.shape[2] != H) err = "out must be [example, answer, head]";
        else if (!(own = PyMem_Malloc(2 * (size_t)(E * A) * sizeof(int64_t) + 1))) nomem = 1;
        else {  /* private copies, taken and checked with the GIL held: no other thread can change them after the check */
            const int64_t *p = own, *r = own + E * A;
            memcpy(own, pos.buf, (size_t)(E * A) * sizeof(int64_t));
            memcpy(own + E * A, idx.buf, (size_t)(E * A) * sizeof(int64_t));
            for (Py_ssize_t i = 0; i < E * A; i++)
                if (p[i] < 0 || p[i] >= P || r[i] < 0 || r[i] >= R) { err = "a position or table row is out of range"; break; }
        }
        if (!err && !nomem) {
            if (fast < 0) {
#ifdef HAVE_X86
                __builtin_cpu_init();
                fast = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("f16c") && __builtin_cpu_supports("fma");
#else
                fast = 0;
#endif
            }
            int use = vector && fast;
            Py_BEGIN_ALLOW_THREADS
#ifdef HAVE_X86
            if (use && half) rows_half_avx2(z.buf, own, own + E * A, tab.buf, out.buf, E, A, P, H, D);
            else if (use) rows_float_avx2(z.buf, own, own + E * A, tab.buf, out.buf, E, A, P, H, D);
            else
#endif
            if (half) rows_half(z.buf, own, own + E * A, tab.buf, out.buf, E, A, P, H, D);
            else rows_float(z.buf, own, own + E * A, tab.buf, out.buf, E, A, P, H, D);
            Py_END_ALLOW_THREADS
            (void)use;
        }
    }
    PyMem_Free(own);
    if (nomem) PyErr_NoMemory();
    else if (err) PyErr_SetString(PyExc_ValueError, err);
    else { Py_INCREF(Py_None); result = Py_None; }
    PyBuffer_Release(&z); PyBuffer_Release(&pos); PyBuffer_Release(&idx); PyBuffer_Release(&tab); PyBuffer_Release(&out);
    return result;
}

static PyMethodDef methods[] = {
    {"head_dot", head_dot, METH_VARARGS, "head_dot(z, pos, idx, table, out, vector=True): see head_dot.py"},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "_head_dot", NULL, -1, methods};

PyMODINIT_FUNC PyInit__head_dot(void) { return PyModule_Create(&module); }
