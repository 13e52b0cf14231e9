"""The compiled parts: gateway.ingest._datagrams, the RTP sockets' batch reader, and
gateway.ingest._twilio, the Twilio media message's fields.

Everything else is declared in pyproject.toml. The extensions are optional: where they
cannot be built (no C compiler), the install goes on and ingest uses its pure-Python paths,
which give the same results (tests/unit/test_datagrams.py and
tests/unit/test_ingest_fast_paths.py compare them).
"""

from setuptools import Extension, setup

setup(
    ext_modules=[
        Extension(
            "gateway.ingest._datagrams",
            sources=["gateway/ingest/_datagrams.c"],
            extra_compile_args=["-O2", "-Wall", "-Werror=implicit-function-declaration"],
            optional=True,
        ),
        Extension(
            "gateway.ingest._twilio",
            sources=["gateway/ingest/_twilio.c"],
            extra_compile_args=["-O2", "-Wall", "-Werror=implicit-function-declaration"],
            optional=True,
        ),
    ]
)
