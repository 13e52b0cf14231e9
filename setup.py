"""The one compiled part: gateway.ingest._datagrams, the RTP sockets' batch reader.

Everything else is declared in pyproject.toml. The extension is optional: where it cannot
be built (no C compiler), the install goes on and the RTP ingest uses its pure-Python
reader, which gives the same datagrams (tests/unit/test_datagrams.py compares them).
"""

from setuptools import Extension, setup

setup(
    ext_modules=[
        Extension(
            "gateway.ingest._datagrams",
            sources=["gateway/ingest/_datagrams.c"],
            extra_compile_args=["-O2", "-Wall", "-Werror=implicit-function-declaration"],
            optional=True,
        )
    ]
)
