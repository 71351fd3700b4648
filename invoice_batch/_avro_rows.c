/*
 * Store rows straight from raw Avro InvoiceEvent values: step 1 of the consume
 * protocol in C for the values that need no judgement.
 *
 * Rows.rows(messages) returns a list as long as ``messages``: for each record either
 * the PendingRow the Python path (``PollRows.python_row`` in consumer/rows.py) makes
 * of it, byte for byte, or None. None means
 * "not certain": the caller takes that record the Python way, which gives its row
 * or its error. A record gets a row here only when it is a clean raw value whose
 * every field validation keeps as it came:
 *
 *   - eight fields of INVOICE_EVENT_LAYOUT, nothing left over, every varint minimal,
 *     every union index 0 or 1;
 *   - each text at most max_text_bytes of strict UTF-8 with no control character
 *     (tab, line feed and carriage return are allowed), its first and last
 *     characters not whitespace (so strip() leaves it as it is);
 *   - an invoice_id of 1 to 128 characters; supplier, description or raw_text
 *     not all empty; raw_text absent or not empty;
 *   - an amount written as str(Decimal) writes it: ASCII digits, at most 13 before
 *     the point, no leading zero, at most 4 after a point; an upper-case ISO 4217
 *     currency whenever there is an amount; a currency, when present, not empty;
 *   - an invoice_date from 1990 to 2100.
 *
 * A row is (invoice_id, content_hash, payload, request_bytes, received_at,
 * event_time, topic, partition, offset, key, None, source_encoding): the payload
 * and the hashed canonical text are the JSON that json.dumps (ensure_ascii) writes,
 * and the size bound is batch_requests.request_size_bound's. Property tests hold
 * every row to the Python path's (tests/unit/test_avro_rows.py).
 *
 * Rows.copy(messages) writes the same rows as PostgreSQL's binary COPY data instead,
 * and builds no Python object for a record, which was most of what rows() spends
 * once the record is read. It gives up (None) at the first record it cannot take,
 * or whose pair (its content hash, which covers the invoice id) came earlier in the
 * poll: the caller then takes the poll through rows().
 *
 * Reading, checking, escaping and hashing a record (parse_record) touch no Python
 * object and run with the interpreter lock released: the store's writer thread binds
 * and sends the previous poll meanwhile, where it used to wait for the lock.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>
#include <string.h>
#ifdef __SSE2__
#include <emmintrin.h>
#endif
#include <openssl/evp.h>

#define MAX_INVOICE_ID_CHARS 128

/* ---------------------------------------------------------------- the context */

typedef struct {
    PyObject_HEAD
    Py_ssize_t max_text_bytes;
    Py_ssize_t max_value_bytes;
    Py_ssize_t fixed_size;  /* request bytes besides the prompt's */
    PyObject *received_at;  /* the poll's received_at, in the store's form (start()) */
    PyObject *times;        /* the poll's dict: milliseconds -> (JSON isoformat, store form) */
    PyObject *time_forms;   /* callable: milliseconds -> (JSON isoformat, store form) */
    EVP_MD *sha256;         /* the content hash's algorithm, fetched once */
    EVP_MD_CTX *hashing;    /* reused for every record */
    PyObject *timed;        /* "avro" */
    PyObject *untimed;      /* "avro-untimed" */
    /* The ISO 4217 codes, one bit per three upper-case letters (26^3 bits). */
    unsigned char currencies[26 * 26 * 26 / 8 + 1];
    /* scratch: the escaped fields */
    char *buffer;
    Py_ssize_t capacity;
    /* copy(): PostgreSQL's binary COPY data being written */
    int64_t pg_received_at;  /* the poll's received_at, microseconds since 2000-01-01 UTC */
    PyObject *copy;          /* the poll's bytes, handed over whole by copy() */
    Py_ssize_t copy_len, copy_capacity, copy_last;  /* copy_last: the last poll's size */
    /* copy(): the poll's content hashes so far (their first 64 bits; 0 marks a free
     * slot) in a table of seen_mask + 1 slots. */
    uint64_t *seen;
    Py_ssize_t seen_mask;
    /* flat(): the poll's list of row values being filled, and how many are in it */
    PyObject *flat;
    Py_ssize_t flat_len;
} Context;

/* Three upper-case ASCII letters as a number below 26^3; -1 for anything else. */
static int
currency_index(const unsigned char *code)
{
    int index = 0;
    for (int k = 0; k < 3; k++) {
        if (code[k] < 'A' || code[k] > 'Z')
            return -1;
        index = index * 26 + (code[k] - 'A');
    }
    return index;
}

/* The source_encoding of a row whose record this path rebuilds (SourceEncoding). */
#define ENCODING_TIMED "avro"
#define ENCODING_UNTIMED "avro-untimed"

static PyObject *str_value, *str_timestamp, *str_topic, *str_partition, *str_offset, *str_key;

static int
Context_traverse(Context *self, visitproc visit, void *arg)
{
    Py_VISIT(self->received_at);
    Py_VISIT(self->times);
    Py_VISIT(self->time_forms);
    return 0;
}

static int
Context_clear(Context *self)
{
    Py_CLEAR(self->received_at);
    Py_CLEAR(self->times);
    Py_CLEAR(self->time_forms);
    Py_CLEAR(self->timed);
    Py_CLEAR(self->untimed);
    return 0;
}

static void
Context_dealloc(Context *self)
{
    PyObject_GC_UnTrack(self);
    Context_clear(self);
    PyMem_Free(self->buffer);
    Py_XDECREF(self->copy);
    EVP_MD_CTX_free(self->hashing);
    EVP_MD_free(self->sha256);
    PyMem_Free(self->seen);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

static int
Context_init(Context *self, PyObject *args, PyObject *kwds)
{
    static char *kwlist[] = {"max_text_bytes", "fixed_size", "time_forms", "currencies", NULL};
    Py_ssize_t max_text_bytes = -1, fixed_size = -1;
    PyObject *time_forms = NULL, *currencies = NULL;
    /* Keyword-only arguments are optional ones to this parser: absent ones are refused below. */
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "|$nnOO", kwlist, &max_text_bytes,
                                     &fixed_size, &time_forms, &currencies))
        return -1;
    if (time_forms == NULL || currencies == NULL) {
        PyErr_SetString(PyExc_TypeError, "Rows() takes every keyword argument");
        return -1;
    }
    if (max_text_bytes < 0 || fixed_size < 0) {
        PyErr_SetString(PyExc_ValueError, "max_text_bytes and fixed_size must be >= 0");
        return -1;
    }
    memset(self->currencies, 0, sizeof self->currencies);
    PyObject *iterator = PyObject_GetIter(currencies);
    if (iterator == NULL)
        return -1;
    PyObject *item;
    while ((item = PyIter_Next(iterator)) != NULL) {
        Py_ssize_t size;
        const char *code = PyUnicode_Check(item) ? PyUnicode_AsUTF8AndSize(item, &size) : NULL;
        /* Other codes are left to the Python path, which knows every one. */
        int index = code != NULL && size == 3 ? currency_index((const unsigned char *)code) : -1;
        if (index >= 0)
            self->currencies[index / 8] |= (unsigned char)(1 << (index % 8));
        Py_DECREF(item);
        if (code == NULL && PyErr_Occurred()) {
            Py_DECREF(iterator);
            return -1;
        }
    }
    Py_DECREF(iterator);
    if (PyErr_Occurred())
        return -1;
    self->max_text_bytes = max_text_bytes;
    self->max_value_bytes = 4 * max_text_bytes + 4096;
    self->fixed_size = fixed_size;
    Py_CLEAR(self->received_at); /* start() gives the first poll's */
    Py_XSETREF(self->times, PyDict_New());
    if (self->times == NULL)
        return -1;
    Py_INCREF(time_forms);
    Py_XSETREF(self->time_forms, time_forms);
    if (self->sha256 == NULL && (self->sha256 = EVP_MD_fetch(NULL, "SHA256", NULL)) == NULL) {
        PyErr_SetString(PyExc_RuntimeError, "OpenSSL has no SHA256");
        return -1;
    }
    if (self->hashing == NULL && (self->hashing = EVP_MD_CTX_new()) == NULL) {
        PyErr_NoMemory();
        return -1;
    }
    Py_XSETREF(self->timed, PyUnicode_InternFromString(ENCODING_TIMED));
    Py_XSETREF(self->untimed, PyUnicode_InternFromString(ENCODING_UNTIMED));
    if (self->timed == NULL || self->untimed == NULL)
        return -1;
    return 0;
}

PyDoc_STRVAR(start_doc,
"start(received_at, pg_copy_received_at=0)\n--\n\n"
"Begin a poll: its received_at in the store's form (and, for copy(), in\n"
"microseconds since 2000-01-01 UTC); the event-time cache is emptied.");

static PyObject *
Context_start(Context *self, PyObject *args, PyObject *kwds)
{
    static char *kwlist[] = {"received_at", "pg_copy_received_at", NULL};
    PyObject *received_at;
    long long pg_received_at = 0;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "O|L", kwlist, &received_at, &pg_received_at))
        return NULL;
    if (self->times == NULL) {
        PyErr_SetString(PyExc_RuntimeError, "Rows was not initialised");
        return NULL;
    }
    Py_INCREF(received_at);
    Py_XSETREF(self->received_at, received_at);
    self->pg_received_at = pg_received_at;
    PyDict_Clear(self->times);
    Py_RETURN_NONE;
}

/* ---------------------------------------------------------------- reading */

typedef enum { OK = 0, NOT_CLEAN = 1, FAILED = -1 } Outcome;

/* The zig-zag varint at *pos; NOT_CLEAN past the end, when it has more bytes than it
 * needs, or when it does not fit 64 bits. */
static Outcome
read_long(const unsigned char *v, Py_ssize_t len, Py_ssize_t *pos, int64_t *out)
{
    uint64_t n = 0;
    int shift = 0;
    unsigned char byte;
    do {
        if (*pos >= len || shift > 63)
            return NOT_CLEAN;
        byte = v[(*pos)++];
        if (shift == 63 && (byte & 0x7E))
            return NOT_CLEAN;
        n |= (uint64_t)(byte & 0x7F) << shift;
        shift += 7;
    } while (byte & 0x80);
    if (byte == 0 && shift > 7)
        return NOT_CLEAN;
    *out = (int64_t)(n >> 1) ^ -(int64_t)(n & 1);
    return OK;
}

/* A ["null", T] union's index: 1 when T follows, 0 for null; NOT_CLEAN otherwise. */
static Outcome
read_union(const unsigned char *v, Py_ssize_t len, Py_ssize_t *pos, int *present)
{
    if (*pos >= len)
        return NOT_CLEAN;
    unsigned char branch = v[(*pos)++];
    if (branch & ~2)
        return NOT_CLEAN;
    *present = branch == 2;
    return OK;
}

typedef struct {
    const unsigned char *p;
    Py_ssize_t n;       /* bytes */
    Py_ssize_t chars;   /* code points */
    int ascii;
} Text;

/* Control characters validation replaces: 00-08, 0B, 0C, 0E-1F, 7F. */
static inline int
is_control(unsigned char c)
{
    return (c < 0x20 && c != '\t' && c != '\n' && c != '\r') || c == 0x7F;
}

/* Strict UTF-8 (as bytes.decode() takes it) with no control byte: the code point at
 * *i, advancing it; -1 when the bytes are not such text. */
static inline int32_t
next_code_point(const unsigned char *p, Py_ssize_t n, Py_ssize_t *i)
{
    unsigned char c = p[*i];
    if (c < 0x80) {
        (*i)++;
        return is_control(c) ? -1 : c;
    }
    if (c < 0xC2)
        return -1;
    if (c < 0xE0) {
        if (*i + 1 >= n || (p[*i + 1] & 0xC0) != 0x80)
            return -1;
        int32_t cp = ((c & 0x1F) << 6) | (p[*i + 1] & 0x3F);
        *i += 2;
        return cp;
    }
    if (c < 0xF0) {
        if (*i + 2 >= n)
            return -1;
        unsigned char c1 = p[*i + 1], c2 = p[*i + 2];
        if ((c1 & 0xC0) != 0x80 || (c2 & 0xC0) != 0x80)
            return -1;
        if (c == 0xE0 && c1 < 0xA0)
            return -1; /* overlong */
        if (c == 0xED && c1 >= 0xA0)
            return -1; /* surrogate */
        int32_t cp = ((c & 0x0F) << 12) | ((c1 & 0x3F) << 6) | (c2 & 0x3F);
        *i += 3;
        return cp;
    }
    if (c < 0xF5) {
        if (*i + 3 >= n)
            return -1;
        unsigned char c1 = p[*i + 1], c2 = p[*i + 2], c3 = p[*i + 3];
        if ((c1 & 0xC0) != 0x80 || (c2 & 0xC0) != 0x80 || (c3 & 0xC0) != 0x80)
            return -1;
        if (c == 0xF0 && c1 < 0x90)
            return -1; /* overlong */
        if (c == 0xF4 && c1 >= 0x90)
            return -1; /* over U+10FFFF */
        int32_t cp = ((c & 0x07) << 18) | ((c1 & 0x3F) << 12) | ((c2 & 0x3F) << 6) | (c3 & 0x3F);
        *i += 4;
        return cp;
    }
    return -1;
}

/* Eight bytes at a time: the word tests below find whether any byte of a word is
 * below n (n <= 128, for words of ASCII bytes) or equal to one byte value. They may
 * flag a word with no such byte after the first that is (borrows), never miss one:
 * a flagged word is then looked at byte by byte. */
#define ONES UINT64_C(0x0101010101010101)
#define HIGH UINT64_C(0x8080808080808080)
#define HAS_LESS(w, n) (((w) - ONES * (n)) & ~(w) & HIGH)
#define HAS_BYTE(w, b) HAS_LESS((w) ^ (ONES * (b)), 1)

static inline uint64_t
load64(const unsigned char *p)
{
    uint64_t w;
    memcpy(&w, p, 8);
    return w;
}

/* The code point that starts at p[i] of checked text. */
static Py_UCS4
code_point_at(const unsigned char *p, Py_ssize_t n, Py_ssize_t i)
{
    return p[i] < 0x80 ? p[i] : (Py_UCS4)next_code_point(p, n, &i);
}

/* The Avro string at *pos, checked; NOT_CLEAN for anything validation would change
 * or reject, or bytes that are not such a string. */
static Outcome
read_text(const unsigned char *v, Py_ssize_t len, Py_ssize_t *pos, Py_ssize_t limit, Text *text)
{
    int64_t n;
    if (read_long(v, len, pos, &n) != OK)
        return NOT_CLEAN;
    if (n < 0 || n > limit || n > len - *pos)
        return NOT_CLEAN;
    const unsigned char *p = v + *pos;
    *pos += (Py_ssize_t)n;
    text->p = p;
    text->n = (Py_ssize_t)n;
    text->ascii = 1;
    Py_ssize_t i = 0;
#ifdef __SSE2__
    /* ASCII blocks of 16 bytes first, where the processor has SSE2 (every x86-64). */
    const __m128i below = _mm_set1_epi8(0x20), del = _mm_set1_epi8(0x7F);
    for (; i + 16 <= n; i += 16) {
        __m128i w = _mm_loadu_si128((const __m128i *)(p + i));
        if (_mm_movemask_epi8(w))
            break; /* a non-ASCII byte: the words and bytes below take it */
        int control = _mm_movemask_epi8(_mm_cmplt_epi8(w, below));
        if (control) {
            __m128i allowed = _mm_or_si128(
                _mm_or_si128(_mm_cmpeq_epi8(w, _mm_set1_epi8('\t')),
                             _mm_cmpeq_epi8(w, _mm_set1_epi8('\n'))),
                _mm_cmpeq_epi8(w, _mm_set1_epi8('\r')));
            control &= ~_mm_movemask_epi8(allowed);
        }
        if (control | _mm_movemask_epi8(_mm_cmpeq_epi8(w, del)))
            return NOT_CLEAN;
    }
#endif
    /* ASCII words: control bytes other than tab, LF and CR are refused. */
    for (; i + 8 <= n; i += 8) {
        uint64_t w = load64(p + i);
        if (w & HIGH)
            break;
        if (HAS_LESS(w, 0x20) || HAS_BYTE(w, 0x7F)) {
            for (int k = 0; k < 8; k++) {
                if (is_control(p[i + k]))
                    return NOT_CLEAN;
            }
        }
    }
    Py_ssize_t chars = i;
    while (i < n) {
        unsigned char c = p[i];
        if (c < 0x80) {
            if (is_control(c))
                return NOT_CLEAN;
            i++;
        }
        else {
            if (next_code_point(p, n, &i) < 0)
                return NOT_CLEAN;
            text->ascii = 0;
        }
        chars++;
    }
    text->chars = chars;
    if (n == 0)
        return OK;
    /* strip() must leave it as it came: no whitespace at either end. */
    Py_ssize_t last = n - 1;
    while (last > 0 && (p[last] & 0xC0) == 0x80)
        last--;
    if (Py_UNICODE_ISSPACE(code_point_at(p, n, 0)) || Py_UNICODE_ISSPACE(code_point_at(p, n, last)))
        return NOT_CLEAN;
    return OK;
}

/* ---------------------------------------------------------------- writing JSON */

static const char HEX[] = "0123456789abcdef";

/* What json.dumps (ensure_ascii) writes for a text read by read_text, quotes
 * included; at most 6 * text->n + 2 bytes. Returns the bytes written. */
static Py_ssize_t
escape(const Text *text, char *out)
{
    char *o = out;
    const unsigned char *p = text->p;
    Py_ssize_t n = text->n, i = 0;
    *o++ = '"';
    while (i < n) {
#ifdef __SSE2__
        /* Blocks of 16 bytes that need no escape: no control byte, quote, backslash
         * or non-ASCII byte (those compare below 0x20 as signed bytes). A block is
         * copied whole and the output advanced to its first byte that needs one:
         * 6 * n + 2 bytes of room cover that. */
        const __m128i below = _mm_set1_epi8(0x20), quote = _mm_set1_epi8('"'),
                      backslash = _mm_set1_epi8('\\');
        while (i + 16 <= n) {
            __m128i w = _mm_loadu_si128((const __m128i *)(p + i));
            int special = _mm_movemask_epi8(_mm_or_si128(
                _mm_cmplt_epi8(w, below),
                _mm_or_si128(_mm_cmpeq_epi8(w, quote), _mm_cmpeq_epi8(w, backslash))));
            _mm_storeu_si128((__m128i *)o, w);
            if (special) {
                int clean = __builtin_ctz((unsigned)special);
                o += clean;
                i += clean;
                break;
            }
            o += 16;
            i += 16;
        }
#endif
        /* Whole words that need no escape: no control byte, quote, backslash or
         * non-ASCII byte. */
        while (i + 8 <= n) {
            uint64_t w = load64(p + i);
            if ((w & HIGH) || HAS_LESS(w, 0x20) || HAS_BYTE(w, '"') || HAS_BYTE(w, '\\'))
                break;
            memcpy(o, p + i, 8);
            o += 8;
            i += 8;
        }
        if (i >= n)
            break;
        unsigned char c = p[i];
        if (c < 0x80) {
            i++;
            switch (c) {
            case '"': *o++ = '\\'; *o++ = '"'; break;
            case '\\': *o++ = '\\'; *o++ = '\\'; break;
            case '\n': *o++ = '\\'; *o++ = 'n'; break;
            case '\r': *o++ = '\\'; *o++ = 'r'; break;
            case '\t': *o++ = '\\'; *o++ = 't'; break;
            default: *o++ = (char)c;
            }
            continue;
        }
        int32_t cp = next_code_point(p, n, &i); /* valid: read_text checked it */
        if (cp >= 0x10000) {
            int32_t v = cp - 0x10000;
            int32_t high = 0xD800 | ((v >> 10) & 0x3FF), low = 0xDC00 | (v & 0x3FF);
            *o++ = '\\'; *o++ = 'u';
            *o++ = HEX[(high >> 12) & 0xF]; *o++ = HEX[(high >> 8) & 0xF];
            *o++ = HEX[(high >> 4) & 0xF]; *o++ = HEX[high & 0xF];
            cp = low;
        }
        *o++ = '\\'; *o++ = 'u';
        *o++ = HEX[(cp >> 12) & 0xF]; *o++ = HEX[(cp >> 8) & 0xF];
        *o++ = HEX[(cp >> 4) & 0xF]; *o++ = HEX[cp & 0xF];
    }
    *o++ = '"';
    return o - out;
}

/* str(Decimal(text)) == text and parse_amount takes it without a check: ASCII
 * digits, 1 to 13 before the point (no leading zero but a lone 0), 1 to 4 after. */
static int
plain_amount(const Text *text)
{
    Py_ssize_t i = 0, n = text->n;
    const unsigned char *p = text->p;
    while (i < n && p[i] >= '0' && p[i] <= '9')
        i++;
    if (i == 0 || i > 13 || (p[0] == '0' && i > 1))
        return 0;
    if (i == n)
        return 1;
    if (p[i] != '.')
        return 0;
    Py_ssize_t point = i++;
    while (i < n && p[i] >= '0' && p[i] <= '9')
        i++;
    return i == n && i - point - 1 >= 1 && i - point - 1 <= 4;
}

static int
known_currency(const Context *ctx, const Text *text)
{
    int index = text->n == 3 ? currency_index(text->p) : -1;
    return index >= 0 && (ctx->currencies[index / 8] >> (index % 8)) & 1;
}

/* The proleptic Gregorian date ``days`` after 1970-01-01 (H. Hinnant's civil_from_days). */
static void
civil_from_days(int64_t days, int64_t *year, int *month, int *day)
{
    days += 719468;
    int64_t era = (days >= 0 ? days : days - 146096) / 146097;
    int64_t doe = days - era * 146097;
    int64_t yoe = (doe - doe / 1460 + doe / 36524 - doe / 146096) / 365;
    int64_t doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    int64_t mp = (5 * doy + 2) / 153;
    *day = (int)(doy - (153 * mp + 2) / 5 + 1);
    *month = (int)(mp < 10 ? mp + 3 : mp - 9);
    *year = yoe + era * 400 + (*month <= 2);
}

/* Room for at least ``needed`` bytes in a buffer the context owns, with as much again
 * to spare when it grows; -1 with MemoryError if it cannot. */
static int
reserve(char **buffer, Py_ssize_t *capacity, Py_ssize_t needed)
{
    if (needed <= *capacity)
        return 0;
    Py_ssize_t grown = needed * 2 + 65536;
    char *moved = PyMem_Realloc(*buffer, (size_t)grown);
    if (moved == NULL) {
        PyErr_NoMemory();
        return -1;
    }
    *buffer = moved;
    *capacity = grown;
    return 0;
}

/* (JSON isoformat, store form) of an event time in milliseconds, borrowed from the
 * poll's cache; NULL with no exception when the time is out of range (the Python
 * path decides), NULL with one on failure. */
static PyObject *
time_forms(Context *ctx, int64_t millis)
{
    PyObject *key = PyLong_FromLongLong(millis);
    if (key == NULL)
        return NULL;
    PyObject *forms = PyDict_GetItemWithError(ctx->times, key);
    if (forms == NULL && !PyErr_Occurred()) {
        forms = PyObject_CallOneArg(ctx->time_forms, key);
        if (forms == NULL) {
            if (PyErr_ExceptionMatches(PyExc_OverflowError) ||
                PyErr_ExceptionMatches(PyExc_ValueError))
                PyErr_Clear();
            Py_DECREF(key);
            return NULL;
        }
        if (!PyTuple_CheckExact(forms) || PyTuple_GET_SIZE(forms) != 2 ||
            !PyUnicode_Check(PyTuple_GET_ITEM(forms, 0)) ||
            !PyUnicode_IS_ASCII(PyTuple_GET_ITEM(forms, 0))) {
            PyErr_SetString(PyExc_TypeError, "time_forms must return (ASCII str, object)");
            Py_DECREF(forms);
            Py_DECREF(key);
            return NULL;
        }
        int failed = PyDict_SetItem(ctx->times, key, forms);
        Py_DECREF(forms); /* the dict holds it */
        if (failed) {
            Py_DECREF(key);
            return NULL;
        }
    }
    Py_DECREF(key);
    return forms;
}

/* ---------------------------------------------------------------- text in pieces */

/* A text written out or hashed as a run of pieces: the JSON texts of a row are its
 * escaped fields between literals, and are never copied together just to be hashed. */
typedef struct {
    const char *p;
    Py_ssize_t n;
} Piece;

#define LITERAL(s) {(s), (Py_ssize_t)(sizeof(s) - 1)}
#define PIECES(array) (sizeof(array) / sizeof *(array))
#define DIGEST_BYTES 32

static Py_ssize_t
pieces_len(const Piece *pieces, size_t count)
{
    Py_ssize_t n = 0;
    for (size_t k = 0; k < count; k++)
        n += pieces[k].n;
    return n;
}

static char *
put_pieces(char *o, const Piece *pieces, size_t count)
{
    for (size_t k = 0; k < count; k++) {
        memcpy(o, pieces[k].p, (size_t)pieces[k].n);
        o += pieces[k].n;
    }
    return o;
}

/* SHA-256 of the pieces' text, as hashlib.sha256 (the same OpenSSL) gives it; -1 if
 * OpenSSL fails. It runs without the interpreter lock: the caller raises. */
static int
hash_pieces(Context *ctx, const Piece *pieces, size_t count, unsigned char *digest)
{
    unsigned int size = 0;
    int ok = EVP_DigestInit_ex(ctx->hashing, ctx->sha256, NULL);
    for (size_t k = 0; ok && k < count; k++)
        ok = EVP_DigestUpdate(ctx->hashing, pieces[k].p, (size_t)pieces[k].n);
    return ok && EVP_DigestFinal_ex(ctx->hashing, digest, &size) && size == DIGEST_BYTES ? 0 : -1;
}

/* The digest as hexdigest() writes it: 64 lower-case hex digits. */
static void
hex_of(const unsigned char *digest, char *hex)
{
    for (int i = 0; i < DIGEST_BYTES; i++) {
        hex[2 * i] = HEX[digest[i] >> 4];
        hex[2 * i + 1] = HEX[digest[i] & 0xF];
    }
}

/* ---------------------------------------------------------------- binary COPY */

/* PostgreSQL's binary COPY: a signature, flags and header extension length, then per
 * tuple a field count and per field a length (-1: NULL) and the value (big-endian
 * integers; timestamptz as microseconds since 2000-01-01 UTC), then -1. */
static const char COPY_SIGNATURE[19] = "PGCOPY\n\377\r\n\0\0\0\0\0\0\0\0\0";
#define COPY_FIELDS 14
#define PG_EPOCH_MICROS INT64_C(946684800000000) /* 2000-01-01 in Unix microseconds */

/* The COPY data is written straight into the bytes object copy() returns (copy()
 * makes it as large as the last poll's with a quarter to spare), grown like reserve()'s
 * buffers when that is short: no copy of a poll's megabytes at the end. */
static int
copy_reserve(Context *ctx, Py_ssize_t more)
{
    Py_ssize_t needed = ctx->copy_len + more;
    if (needed <= ctx->copy_capacity)
        return 0;
    Py_ssize_t grown = ctx->copy == NULL ? needed : needed * 2 + 65536;
    if (ctx->copy == NULL)
        ctx->copy = PyBytes_FromStringAndSize(NULL, grown);
    else if (_PyBytes_Resize(&ctx->copy, grown) < 0)
        ctx->copy = NULL; /* _PyBytes_Resize freed it */
    ctx->copy_capacity = ctx->copy == NULL ? 0 : grown;
    return ctx->copy == NULL ? -1 : 0;
}

static inline char *
copy_data(Context *ctx)
{
    return PyBytes_AS_STRING(ctx->copy);
}

static inline char *
put_be32(char *o, uint32_t v)
{
    o[0] = (char)(v >> 24); o[1] = (char)(v >> 16); o[2] = (char)(v >> 8); o[3] = (char)v;
    return o + 4;
}

static inline char *
put_be64(char *o, uint64_t v)
{
    o = put_be32(o, (uint32_t)(v >> 32));
    return put_be32(o, (uint32_t)v);
}

static inline char *
put_field(char *o, const char *data, Py_ssize_t n)
{
    o = put_be32(o, (uint32_t)n);
    memcpy(o, data, (size_t)n);
    return o + n;
}

static inline char *
put_null(char *o)
{
    return put_be32(o, UINT32_MAX);
}

/* The UTF-8 of a str, or NULL (a NULL field) for None; -1 in *n on failure. */
static const char *
utf8_of(PyObject *value, Py_ssize_t *n)
{
    if (value == Py_None) {
        *n = 0;
        return NULL;
    }
    const char *data = PyUnicode_Check(value) ? PyUnicode_AsUTF8AndSize(value, n) : NULL;
    if (data == NULL) {
        if (!PyErr_Occurred())
            PyErr_SetString(PyExc_TypeError, "expected str or None");
        *n = -1;
    }
    return data;
}

/* A row's tuple in binary COPY, in _COPY_POSTGRESQL's columns: status, attempts,
 * then the row's twelve. */
static int
copy_row(Context *ctx, const Text *id, const char *hash, const Piece *payload,
         size_t payload_pieces, Py_ssize_t payload_len, Py_ssize_t request_bytes,
         int has_event_time, int64_t event_micros, PyObject *topic_obj, PyObject *partition,
         PyObject *offset, PyObject *key, int timed)
{
    Py_ssize_t topic_len, key_len = 0;
    const char *topic = utf8_of(topic_obj, &topic_len);
    if (topic_len < 0)
        return -1;
    const char *encoding = timed ? ENCODING_TIMED : ENCODING_UNTIMED;
    Py_ssize_t encoding_len = (Py_ssize_t)strlen(encoding);
    if (!PyLong_Check(partition) || !PyLong_Check(offset)) {
        PyErr_SetString(PyExc_TypeError, "partition and offset must be int");
        return -1;
    }
    long partition_value = PyLong_AsLong(partition);
    long long offset_value = PyLong_AsLongLong(offset);
    if (PyErr_Occurred())
        return -1;
    if (key != Py_None) {
        if (!PyBytes_Check(key)) {
            PyErr_SetString(PyExc_TypeError, "key must be bytes or None");
            return -1;
        }
        key_len = PyBytes_GET_SIZE(key);
    }
    Py_ssize_t size = 2 + COPY_FIELDS * 4 + 7 /* pending */ + 4 + id->n + 2 * DIGEST_BYTES +
                      payload_len + 4 + 8 + 8 + topic_len + 4 + 8 + key_len + encoding_len;
    if (copy_reserve(ctx, size))
        return -1;
    char *o = copy_data(ctx) + ctx->copy_len;
    *o++ = 0;
    *o++ = COPY_FIELDS;
    o = put_field(o, "pending", 7);
    o = put_be32(put_be32(o, 4), 0);  /* attempts */
    o = put_field(o, (const char *)id->p, id->n);
    o = put_field(o, hash, 2 * DIGEST_BYTES);
    o = put_pieces(put_be32(o, (uint32_t)payload_len), payload, payload_pieces);
    o = put_be32(put_be32(o, 4), (uint32_t)request_bytes);
    o = put_be64(put_be32(o, 8), (uint64_t)ctx->pg_received_at);
    o = has_event_time ? put_be64(put_be32(o, 8), (uint64_t)event_micros) : put_null(o);
    o = topic ? put_field(o, topic, topic_len) : put_null(o);
    o = put_be32(put_be32(o, 4), (uint32_t)partition_value);
    o = put_be64(put_be32(o, 8), (uint64_t)offset_value);
    o = key != Py_None ? put_field(o, PyBytes_AS_STRING(key), key_len) : put_null(o);
    o = put_null(o);  /* source_value: rebuilt from the payload */
    o = put_field(o, encoding, encoding_len);
    ctx->copy_len = o - copy_data(ctx);
    return 0;
}

/* copy(): whether a content hash came earlier in the poll; records it if not. Hashes
 * are told apart by their first 64 bits: two that share them count as one pair, which
 * only sends the poll through rows(). */
static int
seen_before(Context *ctx, const unsigned char *digest)
{
    uint64_t bits = 0;
    for (int i = 0; i < 8; i++)
        bits = bits << 8 | digest[i];
    if (bits == 0)
        bits = 1;
    for (Py_ssize_t slot = (Py_ssize_t)(bits & (uint64_t)ctx->seen_mask);;
         slot = (slot + 1) & ctx->seen_mask) {
        if (ctx->seen[slot] == bits)
            return 1;
        if (ctx->seen[slot] == 0) {
            ctx->seen[slot] = bits;
            return 0;
        }
    }
}

/* A clean record's fields, read, checked, escaped and hashed by parse_record. */
typedef struct {
    Text id, supplier, description, amount, currency, raw_text;
    int has_amount, has_currency, has_date, has_text, has_time;
    int64_t millis;
    /* JSON of each field: the texts escaped in the scratch buffer, the rest here */
    const char *id_json, *supplier_json, *description_json, *text_json;
    Py_ssize_t id_len, supplier_len, description_len, text_len;
    char amount_json[24], currency_json[8], date_json[16];
    Py_ssize_t amount_len, currency_len, date_len;
    unsigned char digest[DIGEST_BYTES]; /* of the canonical text */
} Record;

/* Read the raw value v into r: OK for a clean record, NOT_CLEAN for one the Python
 * path must take, FAILED if OpenSSL fails to hash. It touches no Python object, so
 * the caller runs it with the interpreter lock released (the store's writer thread
 * binds and sends meanwhile). The scratch buffer must hold 6 * len + 64 bytes: the
 * value's texts escaped. */
static Outcome
parse_record(Context *ctx, const unsigned char *v, Py_ssize_t len, Record *r)
{
    int present;
    int64_t days = 0, year = 0;
    int month = 0, day = 0;
    Py_ssize_t pos = 0, limit = ctx->max_text_bytes;
    r->has_amount = r->has_currency = r->has_date = r->has_text = r->has_time = 0;
    r->millis = 0;
    if (read_text(v, len, &pos, limit, &r->id) || read_text(v, len, &pos, limit, &r->supplier) ||
        read_text(v, len, &pos, limit, &r->description))
        return NOT_CLEAN;
    if (read_union(v, len, &pos, &present))
        return NOT_CLEAN;
    if (present && (r->has_amount = 1, read_text(v, len, &pos, limit, &r->amount)))
        return NOT_CLEAN;
    if (read_union(v, len, &pos, &present))
        return NOT_CLEAN;
    if (present && (r->has_currency = 1, read_text(v, len, &pos, limit, &r->currency)))
        return NOT_CLEAN;
    if (read_union(v, len, &pos, &present))
        return NOT_CLEAN;
    if (present && (r->has_date = 1, read_long(v, len, &pos, &days)))
        return NOT_CLEAN;
    if (read_union(v, len, &pos, &present))
        return NOT_CLEAN;
    if (present && (r->has_text = 1, read_text(v, len, &pos, limit, &r->raw_text)))
        return NOT_CLEAN;
    if (read_union(v, len, &pos, &present))
        return NOT_CLEAN;
    if (present && (r->has_time = 1, read_long(v, len, &pos, &r->millis)))
        return NOT_CLEAN;
    if (pos != len)
        return NOT_CLEAN;
    /* validate_invoice's rules, for values that pass them unchanged. */
    if (r->id.n == 0 || r->id.chars > MAX_INVOICE_ID_CHARS)
        return NOT_CLEAN;
    if (r->has_text && r->raw_text.n == 0)
        return NOT_CLEAN;
    if (r->supplier.n == 0 && r->description.n == 0 && !r->has_text)
        return NOT_CLEAN;
    if (r->has_amount && !plain_amount(&r->amount))
        return NOT_CLEAN;
    if (!r->has_amount && !r->has_text)
        return NOT_CLEAN;
    if (r->has_currency && !known_currency(ctx, &r->currency))
        return NOT_CLEAN;
    if (r->has_amount && !r->has_currency)
        return NOT_CLEAN;
    if (r->has_date) {
        if (days < -1000000 || days > 1000000)
            return NOT_CLEAN;
        civil_from_days(days, &year, &month, &day);
        if (year < 1990 || year > 2100)
            return NOT_CLEAN;
    }

    /* Escape each text once into the scratch buffer. */
    char *o = ctx->buffer;
    r->id_json = o;
    o += r->id_len = escape(&r->id, o);
    r->supplier_json = o;
    o += r->supplier_len = escape(&r->supplier, o);
    r->description_json = o;
    o += r->description_len = escape(&r->description, o);
    r->text_json = o;
    if (r->has_text)
        r->text_len = escape(&r->raw_text, o);
    else {
        memcpy(o, "null", 4);
        r->text_len = 4;
    }
    r->amount_len = r->currency_len = r->date_len = 4;
    memcpy(r->amount_json, "null", 4);
    memcpy(r->currency_json, "null", 4);
    memcpy(r->date_json, "null", 4);
    if (r->has_amount) {
        r->amount_json[0] = '"';
        memcpy(r->amount_json + 1, r->amount.p, (size_t)r->amount.n);
        r->amount_json[r->amount.n + 1] = '"';
        r->amount_len = r->amount.n + 2;
    }
    if (r->has_currency) {
        r->currency_json[0] = '"';
        memcpy(r->currency_json + 1, r->currency.p, 3);
        r->currency_json[4] = '"';
        r->currency_len = 5;
    }
    if (r->has_date) {
        /* "YYYY-MM-DD": the year is 1990 to 2100 (checked above). */
        char *d = r->date_json;
        *d++ = '"';
        for (int64_t scale = 1000; scale; scale /= 10)
            *d++ = (char)('0' + year / scale % 10);
        *d++ = '-';
        *d++ = (char)('0' + month / 10);
        *d++ = (char)('0' + month % 10);
        *d++ = '-';
        *d++ = (char)('0' + day / 10);
        *d++ = (char)('0' + day % 10);
        *d++ = '"';
        r->date_len = 12;
    }

    /* The canonical text (sorted keys, no event_time), hashed in pieces. */
    const Piece canonical[] = {
        LITERAL("{\"amount\":"), {r->amount_json, r->amount_len},
        LITERAL(",\"currency\":"), {r->currency_json, r->currency_len},
        LITERAL(",\"description\":"), {r->description_json, r->description_len},
        LITERAL(",\"invoice_date\":"), {r->date_json, r->date_len},
        LITERAL(",\"invoice_id\":"), {r->id_json, r->id_len},
        LITERAL(",\"raw_text\":"), {r->text_json, r->text_len},
        LITERAL(",\"supplier\":"), {r->supplier_json, r->supplier_len},
        LITERAL("}"),
    };
    return hash_pieces(ctx, canonical, PIECES(canonical), r->digest) ? FAILED : OK;
}

/* What row_of makes of a record: its row; its tuple in the COPY data; its row's
 * values in the flat list. */
typedef enum { AS_ROW, AS_COPY, AS_FLAT } Form;

#define ROW_WIDTH 12

/* One record's row (a new reference), Py_None (a new reference) when the Python
 * path must take it, NULL on failure. AS_COPY and AS_FLAT build no row: the record's
 * COPY tuple is written, or its row's values put in ctx->flat, and Py_True returned;
 * or Py_None when its pair came earlier in the poll (nothing is written). */
static PyObject *
row_of(Context *ctx, PyObject *message, Form form)
{
    PyObject *value = PyObject_CallMethodNoArgs(message, str_value);
    if (value == NULL)
        return NULL;
    if (!PyBytes_CheckExact(value)) {
        Py_DECREF(value);
        Py_RETURN_NONE;
    }
    const unsigned char *v = (const unsigned char *)PyBytes_AS_STRING(value);
    Py_ssize_t len = PyBytes_GET_SIZE(value);
    /* As the codec: empty, oversized and framed values go the general way. */
    if (len == 0 || len > ctx->max_value_bytes || v[0] == 0 || (len >= 2 && v[0] == 0xC3 && v[1] == 0x01))
        goto python;
    /* Its texts are shorter than the value: room for them escaped. */
    if (reserve(&ctx->buffer, &ctx->capacity, 6 * len + 64))
        goto failed;
    Record record, *r = &record;
    Outcome parsed;
    Py_BEGIN_ALLOW_THREADS
    parsed = parse_record(ctx, v, len, r);
    Py_END_ALLOW_THREADS
    if (parsed == FAILED) {
        PyErr_SetString(PyExc_RuntimeError, "OpenSSL could not hash the canonical text");
        goto failed;
    }
    if (parsed != OK)
        goto python;
    int has_time = r->has_time, has_text = r->has_text;
    int64_t millis = r->millis;

    /* The event time: the value's own, else the record's timestamp. */
    PyObject *forms = NULL;
    int64_t event_millis = millis;
    if (has_time) {
        forms = time_forms(ctx, millis);
        if (forms == NULL) {
            if (PyErr_Occurred())
                goto failed;
            goto python;
        }
    }
    else {
        PyObject *timestamp = PyObject_CallMethodNoArgs(message, str_timestamp);
        if (timestamp == NULL)
            goto failed;
        long long kafka_ms = -1;
        if (PyTuple_Check(timestamp) && PyTuple_GET_SIZE(timestamp) == 2)
            kafka_ms = PyLong_AsLongLong(PyTuple_GET_ITEM(timestamp, 1));
        Py_DECREF(timestamp);
        if (kafka_ms == -1 && PyErr_Occurred())
            goto failed;
        if (kafka_ms > 0) {
            event_millis = kafka_ms;
            forms = time_forms(ctx, kafka_ms);
            if (forms == NULL) {
                if (PyErr_Occurred())
                    goto failed;
                goto python;
            }
        }
    }
    const char *time_json = "null";
    Py_ssize_t time_json_len = 4;
    PyObject *event_time_db = Py_None;
    if (forms != NULL) {
        PyObject *json = PyTuple_GET_ITEM(forms, 0);
        time_json = (const char *)PyUnicode_1BYTE_DATA(json);
        time_json_len = PyUnicode_GET_LENGTH(json);
        event_time_db = PyTuple_GET_ITEM(forms, 1);
    }

    /* The payload, as Invoice.row_forms writes it, in pieces. */
    const Piece payload_pieces[] = {
        LITERAL("{\"invoice_id\":"), {r->id_json, r->id_len},
        LITERAL(",\"supplier\":"), {r->supplier_json, r->supplier_len},
        LITERAL(",\"description\":"), {r->description_json, r->description_len},
        LITERAL(",\"amount\":"), {r->amount_json, r->amount_len},
        LITERAL(",\"currency\":"), {r->currency_json, r->currency_len},
        LITERAL(",\"invoice_date\":"), {r->date_json, r->date_len},
        LITERAL(",\"raw_text\":"), {r->text_json, r->text_len},
        LITERAL(",\"event_time\":"), {time_json, time_json_len},
        LITERAL("}"),
    };
    Py_ssize_t payload_len = pieces_len(payload_pieces, PIECES(payload_pieces));
    const unsigned char *digest = r->digest;

    /* request_size_bound: the prompt head's escaped length, line by line. */
    Py_ssize_t head = 12 + r->id_len;
    if (r->supplier.n)
        head += 10 + r->supplier_len;
    if (r->description.n)
        head += 13 + r->description_len;
    if (r->has_amount)
        head += 10 + r->amount.n + (r->has_currency ? 1 + r->currency.n : 0);
    else if (r->has_currency)
        head += 12 + r->currency.n;
    if (r->has_date)
        head += 16 + 10;
    Py_ssize_t bound = ctx->fixed_size + head + (has_text ? 8 + r->text_len - 2 : 0);

    if (form != AS_ROW && seen_before(ctx, digest))
        goto python;
    if (form == AS_COPY) {
        char hex[2 * DIGEST_BYTES];
        hex_of(digest, hex);
        PyObject *topic = PyObject_CallMethodNoArgs(message, str_topic);
        PyObject *partition = topic ? PyObject_CallMethodNoArgs(message, str_partition) : NULL;
        PyObject *offset = partition ? PyObject_CallMethodNoArgs(message, str_offset) : NULL;
        PyObject *key = offset ? PyObject_CallMethodNoArgs(message, str_key) : NULL;
        int written = key != NULL &&
                      copy_row(ctx, &r->id, hex, payload_pieces, PIECES(payload_pieces),
                               payload_len, bound, forms != NULL,
                               event_millis * 1000 - PG_EPOCH_MICROS, topic, partition, offset,
                               key, has_time) == 0;
        Py_XDECREF(topic);
        Py_XDECREF(partition);
        Py_XDECREF(offset);
        Py_XDECREF(key);
        if (!written)
            goto failed;
        Py_DECREF(value);
        Py_RETURN_TRUE;
    }

    PyObject *payload = PyUnicode_New(payload_len, 127);
    if (payload == NULL)
        goto failed;
    put_pieces((char *)PyUnicode_1BYTE_DATA(payload), payload_pieces, PIECES(payload_pieces));
    PyObject *content_hash = PyUnicode_New(2 * DIGEST_BYTES, 127);
    if (content_hash == NULL) {
        Py_DECREF(payload);
        goto failed;
    }
    hex_of(digest, (char *)PyUnicode_1BYTE_DATA(content_hash));
    PyObject *encoding = has_time ? ctx->timed : ctx->untimed;
    Py_INCREF(ctx->received_at);
    Py_INCREF(event_time_db);
    Py_INCREF(Py_None);
    Py_INCREF(encoding);
    PyObject *items[ROW_WIDTH] = {
        PyUnicode_DecodeUTF8((const char *)r->id.p, r->id.n, "strict"),
        content_hash,
        payload,
        PyLong_FromSsize_t(bound),
        ctx->received_at,
        event_time_db,
        PyObject_CallMethodNoArgs(message, str_topic),
        PyObject_CallMethodNoArgs(message, str_partition),
        PyObject_CallMethodNoArgs(message, str_offset),
        PyObject_CallMethodNoArgs(message, str_key),
        Py_None,
        encoding,
    };
    Py_DECREF(value);
    /* The row, or its values in place in the flat list (which owns them either way). */
    PyObject *row = form == AS_ROW ? PyTuple_New(ROW_WIDTH) : NULL;
    int complete = form == AS_FLAT || row != NULL;
    for (int k = 0; k < ROW_WIDTH; k++) {
        complete = complete && items[k] != NULL;
        if (row != NULL)
            PyTuple_SET_ITEM(row, k, items[k]);
        else if (form == AS_FLAT)
            PyList_SET_ITEM(ctx->flat, ctx->flat_len + k, items[k]);
        else
            Py_XDECREF(items[k]);
    }
    if (form == AS_FLAT)
        ctx->flat_len += ROW_WIDTH;
    if (!complete) {
        Py_XDECREF(row);
        return NULL;
    }
    if (form == AS_FLAT)
        Py_RETURN_TRUE;
    return row;

python:
    Py_DECREF(value);
    Py_RETURN_NONE;
failed:
    Py_DECREF(value);
    return NULL;
}

PyDoc_STRVAR(rows_doc,
"rows(messages)\n--\n\n"
"For each message, its PendingRow, or None when the Python path must read it.");

/* A poll's messages as a fast sequence (a new reference); NULL, with an error, before
 * start() or when they are no sequence. */
static PyObject *
poll_of(Context *self, PyObject *messages, const char *method)
{
    if (self->received_at == NULL) {
        PyErr_Format(PyExc_RuntimeError, "%s() before start()", method);
        return NULL;
    }
    return PySequence_Fast(messages, "messages must be a sequence");
}

static PyObject *
Context_rows(Context *self, PyObject *messages)
{
    PyObject *sequence = poll_of(self, messages, "rows");
    if (sequence == NULL)
        return NULL;
    Py_ssize_t n = PySequence_Fast_GET_SIZE(sequence);
    PyObject *result = PyList_New(n);
    if (result == NULL) {
        Py_DECREF(sequence);
        return NULL;
    }
    PyObject **items = PySequence_Fast_ITEMS(sequence);
    for (Py_ssize_t i = 0; i < n; i++) {
        PyObject *row = row_of(self, items[i], AS_ROW);
        if (row == NULL) {
            Py_DECREF(result);
            Py_DECREF(sequence);
            return NULL;
        }
        PyList_SET_ITEM(result, i, row);
    }
    Py_DECREF(sequence);
    return result;
}

PyDoc_STRVAR(copy_doc,
"copy(messages)\n--\n\n"
"The rows() of the messages as PostgreSQL's binary COPY data (signature and trailer\n"
"included), in the columns status, attempts and the row's, without building the rows;\n"
"None when a record is left to the Python path or a pair repeats within them (rows()\n"
"then takes the poll).");

/* An empty table of content hashes for a poll of n records, at most half full. */
static int
reset_seen(Context *self, Py_ssize_t n)
{
    Py_ssize_t slots = 1024;
    while (slots < 2 * n)
        slots *= 2;
    if (self->seen_mask + 1 < slots) {
        uint64_t *seen = PyMem_Realloc(self->seen, (size_t)slots * sizeof *seen);
        if (seen == NULL) {
            PyErr_NoMemory();
            return -1;
        }
        self->seen = seen;
        self->seen_mask = slots - 1;
    }
    memset(self->seen, 0, (size_t)(self->seen_mask + 1) * sizeof *self->seen);
    return 0;
}

/* copy() and flat(): each record of a poll in form, until one is not taken. Py_True
 * (borrowed) when every record was, Py_None when one was not or there are none, NULL
 * on failure. */
static PyObject *
take_whole(Context *self, PyObject *sequence, Form form)
{
    Py_ssize_t n = PySequence_Fast_GET_SIZE(sequence);
    if (reset_seen(self, n))
        return NULL;
    PyObject **items = PySequence_Fast_ITEMS(sequence);
    PyObject *outcome = n > 0 ? Py_True : Py_None;
    for (Py_ssize_t i = 0; i < n && outcome == Py_True; i++) {
        outcome = row_of(self, items[i], form);
        if (outcome == NULL)
            return NULL;
        Py_DECREF(outcome); /* a new reference to True or None */
    }
    return outcome;
}

static PyObject *
Context_copy(Context *self, PyObject *messages)
{
    PyObject *sequence = poll_of(self, messages, "copy");
    if (sequence == NULL)
        return NULL;
    Py_CLEAR(self->copy); /* a poll given up on (None) or failed left its bytes */
    self->copy_len = self->copy_capacity = 0;
    Py_ssize_t expected = self->copy_last + self->copy_last / 4;
    if (copy_reserve(self, Py_MAX(expected, (Py_ssize_t)sizeof COPY_SIGNATURE + 2))) {
        Py_DECREF(sequence);
        return NULL;
    }
    memcpy(copy_data(self), COPY_SIGNATURE, sizeof COPY_SIGNATURE);
    self->copy_len = sizeof COPY_SIGNATURE;
    PyObject *outcome = take_whole(self, sequence, AS_COPY);
    Py_DECREF(sequence);
    if (outcome != Py_True)
        return outcome == NULL ? NULL : Py_NewRef(Py_None);
    if (copy_reserve(self, 2))
        return NULL;
    copy_data(self)[self->copy_len++] = (char)0xFF;
    copy_data(self)[self->copy_len++] = (char)0xFF;
    self->copy_last = self->copy_len;
    if (_PyBytes_Resize(&self->copy, self->copy_len) < 0) {
        self->copy = NULL;
        return NULL;
    }
    PyObject *data = self->copy; /* handed over: the next poll makes its own */
    self->copy = NULL;
    self->copy_capacity = 0;
    return data;
}

PyDoc_STRVAR(flat_doc,
"flat(messages)\n--\n\n"
"The rows() of the messages as one list of their values, row after row (12 a row);\n"
"None when a record is left to the Python path or a pair repeats within them (rows()\n"
"then takes the poll).");

static PyObject *
Context_flat(Context *self, PyObject *messages)
{
    PyObject *sequence = poll_of(self, messages, "flat");
    if (sequence == NULL)
        return NULL;
    self->flat = PyList_New(ROW_WIDTH * PySequence_Fast_GET_SIZE(sequence));
    if (self->flat == NULL) {
        Py_DECREF(sequence);
        return NULL;
    }
    self->flat_len = 0;
    PyObject *outcome = take_whole(self, sequence, AS_FLAT);
    Py_DECREF(sequence);
    PyObject *flat = self->flat; /* its unfilled slots are NULL until it is complete */
    self->flat = NULL;
    if (outcome == Py_True)
        return flat;
    Py_DECREF(flat);
    if (outcome == NULL)
        return NULL;
    Py_RETURN_NONE;
}

static PyMethodDef Context_methods[] = {
    {"start", (PyCFunction)(void (*)(void))Context_start, METH_VARARGS | METH_KEYWORDS, start_doc},
    {"rows", (PyCFunction)Context_rows, METH_O, rows_doc},
    {"copy", (PyCFunction)Context_copy, METH_O, copy_doc},
    {"flat", (PyCFunction)Context_flat, METH_O, flat_doc},
    {NULL, NULL, 0, NULL},
};

PyDoc_STRVAR(Context_doc,
"Rows(*, max_text_bytes, fixed_size, time_forms, currencies)\n--\n\n"
"A consumer's settings for rows(): the text cap, the request bytes besides the\n"
"prompt, the function that gives an event time's (JSON isoformat, store form) from\n"
"its milliseconds and the ISO 4217 codes; the same for copy() and flat().\n"
"Call start() at every poll; the buffers are kept from one poll to the next. One\n"
"thread at a time: each record is read with the interpreter lock released.");

static PyTypeObject ContextType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "invoice_batch._avro_rows.Rows",
    .tp_basicsize = sizeof(Context),
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC,
    .tp_doc = Context_doc,
    .tp_new = PyType_GenericNew,
    .tp_init = (initproc)Context_init,
    .tp_dealloc = (destructor)Context_dealloc,
    .tp_traverse = (traverseproc)Context_traverse,
    .tp_clear = (inquiry)Context_clear,
    .tp_methods = Context_methods,
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT,
    .m_name = "invoice_batch._avro_rows",
    .m_doc = "Store rows straight from raw Avro InvoiceEvent values (see the source's header).",
    .m_size = -1,
};

PyMODINIT_FUNC
PyInit__avro_rows(void)
{
#define INTERN(var, text)                                                                       \
    if ((var = PyUnicode_InternFromString(text)) == NULL)                                    \
        return NULL;
    INTERN(str_value, "value");
    INTERN(str_timestamp, "timestamp");
    INTERN(str_topic, "topic");
    INTERN(str_partition, "partition");
    INTERN(str_offset, "offset");
    INTERN(str_key, "key");
#undef INTERN
    if (PyType_Ready(&ContextType) < 0)
        return NULL;
    PyObject *m = PyModule_Create(&module);
    if (m == NULL)
        return NULL;
    Py_INCREF(&ContextType);
    if (PyModule_AddObject(m, "Rows", (PyObject *)&ContextType) < 0) {
        Py_DECREF(&ContextType);
        Py_DECREF(m);
        return NULL;
    }
    return m;
}
