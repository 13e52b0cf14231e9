/* gateway.ingest._twilio: the fields of a Twilio media message, read without building it.
 *
 * media(text) -> (track, payload, timestamp, sequence) | None
 *
 * A tuple only for the common shape, the message of every 20 ms:
 *
 *   {"event": "media", "sequenceNumber": "<digits>",
 *    "media": {"track": "inbound"|"outbound", "timestamp": "<digits>", "payload": "...", ...},
 *    ...}
 *
 * in any key order and JSON whitespace, where every value is a string without a backslash
 * or a control character, except "media", an object whose values are such strings, and
 * where no key read here comes twice; digits are 1 to 18 ASCII digits (timestamp and
 * sequence come back as ints). Such a text is a JSON object that orjson reads to the same
 * values. Anything else (an escape, a number, an array, a literal, deeper nesting, a
 * repeated key, another event, a missing field, invalid JSON, a lone surrogate) is None,
 * and the caller parses the text the general way (gateway.ingest.twilio), which accepts or
 * refuses it as it always has. The payload is returned as the str it is in the text: its
 * base64 is decoded by the caller, with the same decoder either way.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <string.h>

static PyObject *INBOUND;
static PyObject *OUTBOUND;

typedef struct {
    const char *p;
    const char *end;
} Cursor;

typedef struct {
    const char *start;
    Py_ssize_t len;
} Span;

static void skip_ws(Cursor *c) {
    while (c->p < c->end && (*c->p == ' ' || *c->p == '\t' || *c->p == '\n' || *c->p == '\r'))
        c->p++;
}

/* A string with no escape and no control character; the cursor is on its opening quote. */
static int read_string(Cursor *c, Span *out) {
    if (c->p >= c->end || *c->p != '"')
        return 0;
    const char *start = ++c->p;
    while (c->p < c->end) {
        unsigned char ch = (unsigned char)*c->p;
        if (ch == '"') {
            out->start = start;
            out->len = c->p - start;
            c->p++;
            return 1;
        }
        if (ch == '\\' || ch < 0x20)
            return 0;
        c->p++;
    }
    return 0;
}

static int is(const Span *s, const char *word) {
    size_t n = strlen(word);
    return (size_t)s->len == n && memcmp(s->start, word, n) == 0;
}

/* 1 to 18 ASCII digits, as gateway.ingest.twilio._is_digits. */
static int digits(const Span *s, long long *value) {
    if (s->len < 1 || s->len > 18)
        return 0;
    long long v = 0;
    for (Py_ssize_t i = 0; i < s->len; i++) {
        char ch = s->start[i];
        if (ch < '0' || ch > '9')
            return 0;
        v = v * 10 + (ch - '0');
    }
    *value = v;
    return 1;
}

/* Take the next member separator or the closing brace: 1 for ',', 2 for '}', 0 else. */
static int next_member(Cursor *c) {
    skip_ws(c);
    if (c->p >= c->end)
        return 0;
    char ch = *c->p++;
    if (ch == ',') {
        skip_ws(c);
        return 1;
    }
    return ch == '}' ? 2 : 0;
}

/* An object of string values, the cursor on its '{'; track, timestamp and payload kept. */
static int read_media(Cursor *c, Span *track, Span *timestamp, Span *payload) {
    int seen_track = 0, seen_timestamp = 0, seen_payload = 0;
    c->p++; /* '{' */
    skip_ws(c);
    if (c->p < c->end && *c->p == '}') {
        c->p++;
        return 0; /* empty: no fields */
    }
    for (;;) {
        Span key, value;
        if (!read_string(c, &key))
            return 0;
        skip_ws(c);
        if (c->p >= c->end || *c->p++ != ':')
            return 0;
        skip_ws(c);
        if (!read_string(c, &value))
            return 0;
        if (is(&key, "track")) {
            if (seen_track++)
                return 0;
            *track = value;
        } else if (is(&key, "timestamp")) {
            if (seen_timestamp++)
                return 0;
            *timestamp = value;
        } else if (is(&key, "payload")) {
            if (seen_payload++)
                return 0;
            *payload = value;
        }
        int after = next_member(c);
        if (after == 2)
            return seen_track && seen_timestamp && seen_payload;
        if (after != 1)
            return 0;
    }
}

static PyObject *media(PyObject *self, PyObject *arg) {
    if (!PyUnicode_Check(arg)) {
        PyErr_SetString(PyExc_TypeError, "media() takes a str");
        return NULL;
    }
    Py_ssize_t size;
    const char *text = PyUnicode_AsUTF8AndSize(arg, &size);
    if (text == NULL) { /* a lone surrogate: not this shape, whatever it is */
        PyErr_Clear();
        Py_RETURN_NONE;
    }
    Cursor c = {text, text + size};
    Span event = {0}, sequence = {0}, track = {0}, timestamp = {0}, payload = {0};
    int seen_event = 0, seen_sequence = 0, seen_media = 0;

    skip_ws(&c);
    if (c.p >= c.end || *c.p++ != '{')
        Py_RETURN_NONE;
    skip_ws(&c);
    for (;;) {
        Span key;
        if (!read_string(&c, &key))
            Py_RETURN_NONE;
        skip_ws(&c);
        if (c.p >= c.end || *c.p++ != ':')
            Py_RETURN_NONE;
        skip_ws(&c);
        if (is(&key, "media")) {
            if (seen_media++ || c.p >= c.end || *c.p != '{')
                Py_RETURN_NONE;
            if (!read_media(&c, &track, &timestamp, &payload))
                Py_RETURN_NONE;
        } else {
            Span value;
            if (!read_string(&c, &value))
                Py_RETURN_NONE;
            if (is(&key, "event")) {
                if (seen_event++)
                    Py_RETURN_NONE;
                event = value;
            } else if (is(&key, "sequenceNumber")) {
                if (seen_sequence++)
                    Py_RETURN_NONE;
                sequence = value;
            }
        }
        int after = next_member(&c);
        if (after == 2)
            break;
        if (after != 1)
            Py_RETURN_NONE;
    }
    skip_ws(&c);
    if (c.p != c.end || !seen_event || !seen_sequence || !seen_media || !is(&event, "media"))
        Py_RETURN_NONE;

    PyObject *track_name;
    if (is(&track, "inbound"))
        track_name = INBOUND;
    else if (is(&track, "outbound"))
        track_name = OUTBOUND;
    else
        Py_RETURN_NONE;
    long long stamp, number;
    if (!digits(&timestamp, &stamp) || !digits(&sequence, &number))
        Py_RETURN_NONE;
    PyObject *encoded = PyUnicode_DecodeUTF8(payload.start, payload.len, NULL);
    if (encoded == NULL)
        return NULL; /* cannot happen for a span of a str's own UTF-8 */
    return Py_BuildValue("(ONLL)", track_name, encoded, stamp, number);
}

static PyMethodDef methods[] = {
    {"media", media, METH_O,
     "media(text) -> (track, payload, timestamp, sequence) for the common Twilio media "
     "message, else None."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "_twilio", "The Twilio media message's fields, read in C.", -1, methods,
};

PyMODINIT_FUNC PyInit__twilio(void) {
    INBOUND = PyUnicode_InternFromString("inbound");
    OUTBOUND = PyUnicode_InternFromString("outbound");
    if (INBOUND == NULL || OUTBOUND == NULL)
        return NULL;
    return PyModule_Create(&module);
}
