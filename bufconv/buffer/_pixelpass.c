/* One pass over a float32 image: its min, max and NaNs, and its uint8 pixels.
 *
 * The online buffer's `add` reads each new camera image once here, where numpy needs five passes
 * (min, max, the product, the rounding, the narrowing). The pixels are to_uint8's: the float32
 * product with `scale` rounded half to even. Adding 1.5 * 2**23 to a value in (-2**22, 2**22)
 * rounds it (the FPU's round-half-even) to a float whose low mantissa byte is the integer's low
 * byte: for values the caller accepts (within its slack of [0, 255]) that byte is the pixel.
 * Bytes written for values the caller then refuses are meaningless: the caller writes into a
 * free slot and counts it only after its check. Built with -ffp-contract=off, so that the
 * product is rounded before the sum (a fused multiply-add would round once, unlike numpy).
 *
 * to_uint8_into(src, dst, scale) -> (lo, hi): src a C-contiguous float32 buffer, dst a writable
 * C-contiguous uint8 buffer of as many items; lo and hi are NaN when src holds a NaN.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <math.h>
#include <stdint.h>
#include <string.h>
#if defined(__SSE2__)
#include <emmintrin.h>
#endif

#define ROUND_INTO_LOW_BYTE 12582912.0f /* 1.5 * 2**23 */

static int convert(const float *src, uint8_t *dst, Py_ssize_t n, float scale, float *lo_out,
                   float *hi_out)
{
    float lo = INFINITY, hi = -INFINITY;
    int nan = 0;
    Py_ssize_t i = 0;
#if defined(__SSE2__)
    /* 16 pixels a step; _mm_min_ps(a, m) returns m when a is NaN, so NaNs are counted apart. */
    __m128 vlo = _mm_set1_ps(INFINITY), vhi = _mm_set1_ps(-INFINITY), vnan = _mm_setzero_ps();
    const __m128 vscale = _mm_set1_ps(scale), vround = _mm_set1_ps(ROUND_INTO_LOW_BYTE);
    const __m128i low_byte = _mm_set1_epi32(0xff);
    for (; i + 16 <= n; i += 16) {
        __m128i pixels[4];
        for (int k = 0; k < 4; k++) {
            __m128 a = _mm_loadu_ps(src + i + 4 * k);
            vlo = _mm_min_ps(a, vlo);
            vhi = _mm_max_ps(a, vhi);
            vnan = _mm_or_ps(vnan, _mm_cmpunord_ps(a, a));
            __m128 rounded = _mm_add_ps(_mm_mul_ps(a, vscale), vround);
            pixels[k] = _mm_and_si128(_mm_castps_si128(rounded), low_byte);
        }
        /* 4 x 4 lanes of 0..255 narrowed to 16 bytes (the saturating packs change nothing) */
        __m128i packed = _mm_packus_epi16(_mm_packs_epi32(pixels[0], pixels[1]),
                                          _mm_packs_epi32(pixels[2], pixels[3]));
        _mm_storeu_si128((__m128i *)(dst + i), packed);
    }
    float lanes_lo[4], lanes_hi[4];
    _mm_storeu_ps(lanes_lo, vlo);
    _mm_storeu_ps(lanes_hi, vhi);
    for (int k = 0; k < 4; k++) {
        lo = lanes_lo[k] < lo ? lanes_lo[k] : lo;
        hi = lanes_hi[k] > hi ? lanes_hi[k] : hi;
    }
    nan = _mm_movemask_ps(vnan) != 0;
#endif
    for (; i < n; i++) { /* the tail, or every pixel where SSE2 is not there */
        float v = src[i];
        lo = v < lo ? v : lo;
        hi = v > hi ? v : hi;
        nan |= v != v;
        float rounded = v * scale + ROUND_INTO_LOW_BYTE;
        uint32_t bits;
        memcpy(&bits, &rounded, sizeof bits);
        dst[i] = (uint8_t)bits;
    }
    *lo_out = lo;
    *hi_out = hi;
    return nan;
}

static int is_format(const Py_buffer *view, const char *format)
{
    const char *f = view->format ? view->format : "B";
    if (*f == '<' || *f == '=' || *f == '@') f++; /* native little-endian on the machines built for */
    return strcmp(f, format) == 0;
}

static PyObject *to_uint8_into(PyObject *self, PyObject *const *args, Py_ssize_t nargs)
{
    (void)self;
    if (nargs != 3) {
        PyErr_SetString(PyExc_TypeError, "to_uint8_into(src, dst, scale) takes 3 arguments");
        return NULL;
    }
    double scale = PyFloat_AsDouble(args[2]);
    if (scale == -1.0 && PyErr_Occurred()) return NULL;
    Py_buffer src, dst;
    if (PyObject_GetBuffer(args[0], &src, PyBUF_C_CONTIGUOUS | PyBUF_FORMAT) < 0) return NULL;
    if (PyObject_GetBuffer(args[1], &dst, PyBUF_C_CONTIGUOUS | PyBUF_WRITABLE | PyBUF_FORMAT) < 0) {
        PyBuffer_Release(&src);
        return NULL;
    }
    PyObject *result = NULL;
    if (src.itemsize != 4 || !is_format(&src, "f") || dst.itemsize != 1 || !is_format(&dst, "B")) {
        PyErr_SetString(PyExc_TypeError, "to_uint8_into: src must be float32 and dst uint8");
    } else if (src.len / 4 != dst.len) {
        PyErr_Format(PyExc_ValueError, "to_uint8_into: src has %zd values, dst %zd", src.len / 4, dst.len);
    } else {
        float lo, hi;
        /* The GIL is kept: ~10 us a camera, less than a thread switch would cost the caller. */
        if (convert((const float *)src.buf, (uint8_t *)dst.buf, dst.len, (float)scale, &lo, &hi))
            lo = hi = NAN; /* as numpy's min and max give */
        result = Py_BuildValue("(dd)", (double)lo, (double)hi);
    }
    PyBuffer_Release(&src);
    PyBuffer_Release(&dst);
    return result;
}

static PyMethodDef methods[] = {
    {"to_uint8_into", (PyCFunction)(void (*)(void))to_uint8_into, METH_FASTCALL,
     "to_uint8_into(src, dst, scale) -> (lo, hi): src's min and max (NaN if src has a NaN), "
     "and dst := src * scale rounded half to even, as uint8 (meaningful where lo, hi are in range)."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, .m_name = "_pixelpass", .m_size = -1, .m_methods = methods};

PyMODINIT_FUNC PyInit__pixelpass(void) { return PyModule_Create(&module); }
