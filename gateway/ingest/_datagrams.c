/* gateway.ingest._datagrams: every datagram waiting on a non-blocking UDP socket, in one
 * call and without an exception at the end.
 *
 * read(fd, max_count, max_bytes, cache) returns a list of (data, address) pairs, exactly
 * what calling socket.recvfrom(max_bytes) on the socket until it raised BlockingIOError
 * (or max_count pairs) would have returned: the same bytes (a longer datagram truncated to
 * max_bytes) and the same address tuples ((host, port) for IPv4, (host, port, flowinfo,
 * scope_id) for IPv6, the host formatted by inet_ntop as CPython's socket module
 * does). The pure-Python reader in rtp_sockets.py is the reference; tests
 * compare the two.
 *
 * What it saves: a Python call and a method lookup per datagram, the BlockingIOError that
 * ends every read, and, on Linux, a system call per datagram (recvmmsg reads up to
 * BATCH at once). The address is formatted only when it differs from the last one: cache
 * is a two-item list [raw sockaddr bytes, address tuple] that the caller keeps per socket
 * (start it as [b"", None]); a peer that keeps its address costs no formatting.
 *
 * An error other than "would block" (an ICMP error queued on the socket) ends the read:
 * the datagrams read before it are returned, and it is raised (OSError) only when there
 * are none, as the reference does (where recvmmsg stopped short on an error, the kernel
 * returns it on the next read, which then reads once more). The GIL is held throughout:
 * every call is non-blocking.
 */
#define PY_SSIZE_T_CLEAN
#ifndef _GNU_SOURCE
#define _GNU_SOURCE /* recvmmsg */
#endif
#include <Python.h>

#include <errno.h>
#include <arpa/inet.h>
#include <netinet/in.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/types.h>

#define BATCH 16 /* datagrams per recvmmsg */
#define MAX_BYTES_LIMIT (1 << 20)

static unsigned char *buffers = NULL; /* BATCH * buffer_size bytes, kept between calls */
static Py_ssize_t buffer_size = 0;

static int ensure_buffers(Py_ssize_t size) {
    if (buffers != NULL && buffer_size >= size) {
        return 0;
    }
    unsigned char *fresh = PyMem_RawMalloc((size_t)size * BATCH);
    if (fresh == NULL) {
        PyErr_NoMemory();
        return -1;
    }
    PyMem_RawFree(buffers);
    buffers = fresh;
    buffer_size = size;
    return 0;
}

/* The address tuple CPython's socket module makes for this sockaddr (makesockaddr: the
 * host by inet_ntop), or NULL with an exception set. */
static PyObject *make_address(const struct sockaddr *addr) {
    char host[INET6_ADDRSTRLEN];
    if (addr->sa_family == AF_INET) {
        const struct sockaddr_in *in4 = (const struct sockaddr_in *)addr;
        if (inet_ntop(AF_INET, &in4->sin_addr, host, sizeof host) == NULL) {
            return PyErr_SetFromErrno(PyExc_OSError);
        }
        return Py_BuildValue("(si)", host, (int)ntohs(in4->sin_port));
    }
    if (addr->sa_family == AF_INET6) {
        const struct sockaddr_in6 *in6 = (const struct sockaddr_in6 *)addr;
        if (inet_ntop(AF_INET6, &in6->sin6_addr, host, sizeof host) == NULL) {
            return PyErr_SetFromErrno(PyExc_OSError);
        }
        return Py_BuildValue("(siII)", host, (int)ntohs(in6->sin6_port),
                             (unsigned int)ntohl(in6->sin6_flowinfo),
                             (unsigned int)in6->sin6_scope_id);
    }
    PyErr_SetString(PyExc_OSError, "a datagram from an address family other than IP");
    return NULL;
}

/* The cached tuple when addr is the cached address, else a new one (and the cache is
 * updated). A new reference, or NULL with an exception set. Making a tuple may run the
 * garbage collector, and with it any finalizer: the cache's items are held, not borrowed,
 * and written back with PyList_SetItem, which releases whatever the list holds then. */
static PyObject *address(PyObject *cache, const struct sockaddr *addr, socklen_t length) {
    PyObject *raw = PyList_GET_ITEM(cache, 0);
    PyObject *known = PyList_GET_ITEM(cache, 1);
    if (known != Py_None && PyBytes_Check(raw) && PyBytes_GET_SIZE(raw) == (Py_ssize_t)length &&
        memcmp(PyBytes_AS_STRING(raw), addr, length) == 0) {
        Py_INCREF(known);
        return known;
    }
    PyObject *tuple = make_address(addr);
    if (tuple == NULL) {
        return NULL;
    }
    PyObject *fresh = PyBytes_FromStringAndSize((const char *)addr, length);
    if (fresh == NULL) {
        Py_DECREF(tuple);
        return NULL;
    }
    if (PyList_SetItem(cache, 0, fresh) < 0) { /* steals fresh, even when it fails */
        Py_DECREF(tuple);
        return NULL;
    }
    Py_INCREF(tuple);
    if (PyList_SetItem(cache, 1, tuple) < 0) { /* steals the new reference */
        Py_DECREF(tuple);
        return NULL;
    }
    return tuple;
}

/* Append (data, address) to out, data already a bytes object (taken: its reference is
 * consumed); 0, or -1 with an exception set. */
static int append(PyObject *out, PyObject *cache, PyObject *bytes, const struct sockaddr *addr,
                  socklen_t length) {
    PyObject *source = address(cache, addr, length);
    if (source == NULL) {
        Py_DECREF(bytes);
        return -1;
    }
    PyObject *pair = PyTuple_Pack(2, bytes, source);
    Py_DECREF(bytes);
    Py_DECREF(source);
    if (pair == NULL) {
        return -1;
    }
    int status = PyList_Append(out, pair);
    Py_DECREF(pair);
    return status;
}

static int would_block(int error) {
    return error == EAGAIN || error == EWOULDBLOCK || error == EINTR;
}

/* The read ended on errno: what it read, or (nothing read, and not "would block") the
 * error; out is consumed. */
static PyObject *finish(PyObject *out, int error) {
    if (PyList_GET_SIZE(out) == 0 && !would_block(error)) {
        Py_DECREF(out);
        errno = error;
        return PyErr_SetFromErrno(PyExc_OSError);
    }
    return out;
}

static PyObject *read_datagrams(PyObject *module, PyObject *args) {
    int fd;
    Py_ssize_t max_count, max_bytes;
    PyObject *cache;
    if (!PyArg_ParseTuple(args, "innO!", &fd, &max_count, &max_bytes, &PyList_Type, &cache)) {
        return NULL;
    }
    (void)module;
    if (max_count < 1 || max_bytes < 1 || max_bytes > MAX_BYTES_LIMIT) {
        PyErr_SetString(PyExc_ValueError, "max_count and max_bytes must be positive "
                                          "(max_bytes at most 1 MiB)");
        return NULL;
    }
    if (PyList_GET_SIZE(cache) != 2 || !PyBytes_Check(PyList_GET_ITEM(cache, 0))) {
        PyErr_SetString(PyExc_ValueError, "cache must be a list [bytes, tuple or None]");
        return NULL;
    }
    if (ensure_buffers(max_bytes) < 0) {
        return NULL;
    }
    PyObject *out = PyList_New(0);
    if (out == NULL) {
        return NULL;
    }
#ifdef __linux__
    struct mmsghdr messages[BATCH];
    struct iovec vectors[BATCH];
    struct sockaddr_storage sources[BATCH];
    while (PyList_GET_SIZE(out) < max_count) {
        Py_ssize_t want = max_count - PyList_GET_SIZE(out);
        unsigned int count = want < BATCH ? (unsigned int)want : BATCH;
        for (unsigned int i = 0; i < count; i++) {
            vectors[i].iov_base = buffers + (size_t)i * (size_t)max_bytes;
            vectors[i].iov_len = (size_t)max_bytes;
            memset(&messages[i].msg_hdr, 0, sizeof messages[i].msg_hdr);
            messages[i].msg_hdr.msg_iov = &vectors[i];
            messages[i].msg_hdr.msg_iovlen = 1;
            messages[i].msg_hdr.msg_name = &sources[i];
            messages[i].msg_hdr.msg_namelen = sizeof sources[i];
        }
        int got = recvmmsg(fd, messages, count, MSG_DONTWAIT, NULL);
        if (got < 0 && PyList_GET_SIZE(out) == 0 && !would_block(errno)) {
            /* An error the kernel kept from an earlier read that stopped short (ICMP, on a
             * connected socket): the reference's read would have swallowed it after its
             * datagrams. Read again; raised only if nothing comes. */
            int error = errno;
            got = recvmmsg(fd, messages, count, MSG_DONTWAIT, NULL);
            if (got < 0) {
                return finish(out, would_block(errno) ? error : errno);
            }
        }
        if (got < 0) {
            return finish(out, errno);
        }
        /* Every payload copied out of the shared buffers before anything that may run the
         * garbage collector (bytes objects are not tracked; tuples are), so that a
         * finalizer that reads again cannot overwrite what this read has not taken. */
        PyObject *payloads[BATCH];
        for (int i = 0; i < got; i++) {
            size_t size = messages[i].msg_len; /* what was copied: at most max_bytes */
            payloads[i] = PyBytes_FromStringAndSize((const char *)vectors[i].iov_base,
                                                    (Py_ssize_t)size);
            if (payloads[i] == NULL) {
                for (int j = 0; j < i; j++) {
                    Py_DECREF(payloads[j]);
                }
                Py_DECREF(out);
                return NULL;
            }
        }
        for (int i = 0; i < got; i++) {
            if (append(out, cache, payloads[i], (struct sockaddr *)&sources[i],
                       messages[i].msg_hdr.msg_namelen) < 0) {
                for (int j = i + 1; j < got; j++) {
                    Py_DECREF(payloads[j]);
                }
                Py_DECREF(out);
                return NULL;
            }
        }
        if ((unsigned int)got < count) {
            break; /* the queue is empty (or the next one is an error, raised next time) */
        }
    }
    return out;
#else
    while (PyList_GET_SIZE(out) < max_count) {
        struct sockaddr_storage source;
        socklen_t length = sizeof source;
        ssize_t size = recvfrom(fd, buffers, (size_t)max_bytes, MSG_DONTWAIT,
                                (struct sockaddr *)&source, &length);
        if (size < 0) {
            return finish(out, errno);
        }
        PyObject *payload = PyBytes_FromStringAndSize((const char *)buffers, (Py_ssize_t)size);
        if (payload == NULL || append(out, cache, payload, (struct sockaddr *)&source, length) < 0) {
            Py_DECREF(out);
            return NULL;
        }
    }
    return out;
#endif
}

static PyMethodDef methods[] = {
    {"read", read_datagrams, METH_VARARGS,
     "read(fd, max_count, max_bytes, cache) -> list of (data, address): every datagram "
     "waiting on the non-blocking socket fd (max_count at most)."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT,
    "_datagrams",
    "Every datagram waiting on a non-blocking UDP socket, in one call.",
    -1,
    methods,
    NULL,
    NULL,
    NULL,
    NULL,
};

PyMODINIT_FUNC PyInit__datagrams(void) { return PyModule_Create(&module); }
