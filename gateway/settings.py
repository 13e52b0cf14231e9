"""The one settings object of callvault.

Built once by the CLI from the environment (``CALLVAULT_*``, nested sections joined with
``__``) and CLI flags, then sliced and passed into constructors. Library modules never read
the environment themselves. The variable names are part of the external contract
(../shared/API.md); the README's settings table is generated from the docstrings below.
"""

from __future__ import annotations

from datetime import timedelta
from ipaddress import IPv4Address, IPv4Network, IPv6Address, IPv6Network, ip_address
from pathlib import Path
from typing import TYPE_CHECKING, Literal

from pydantic import BaseModel, Field, IPvAnyNetwork, SecretStr, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

if TYPE_CHECKING:
    from storage.catalog import TenantLimits


LoopChoice = Literal["auto", "uvloop", "asyncio"]
"""``CALLVAULT_HTTP__LOOP``'s values (``gateway.loops`` acts on them)."""


class HttpSettings(BaseModel):
    host: str = "127.0.0.1"
    """Address the API and WebSocket ingest listen on (not loopback: needs TLS or
    `tls_offloaded`). Default `127.0.0.1`."""
    port: int = Field(default=8080, ge=0, le=65535)
    """TCP port of the API and WebSocket ingest. Default `8080`."""
    tls_cert: Path | None = None
    """PEM certificate chain (server certificate first) that makes the API HTTPS and ingest
    WSS; reloaded on SIGHUP. Default: none (plain HTTP)."""
    tls_key: Path | None = None
    """PEM private key (unencrypted) of `tls_cert`; reloaded on SIGHUP. Default: none."""
    tls_offloaded: bool = False
    """A proxy in front terminates TLS: allows a plaintext non-loopback `host` and `?token=`
    behind it. Default `false`."""
    max_connections: int = Field(default=10000, ge=1)
    """Open connections the API and WebSocket ingest take at once; more are answered 503
    `too_many_connections` and closed. Default `10000`."""
    max_connections_per_peer: int = Field(default=1000, ge=1)
    """Open connections one IP address (IPv6: one /64) may hold at once (behind a proxy: the
    proxy's); more are answered 503 `too_many_connections` and closed. Default `1000`."""
    header_timeout: timedelta = Field(default=timedelta(seconds=10), gt=timedelta(0))
    """A new connection whose first request line and headers have not all arrived within
    this is closed (slowloris). Default `PT10S`."""
    keepalive_timeout: timedelta = Field(default=timedelta(seconds=75), gt=timedelta(0))
    """An idle kept-alive connection, or one whose next request is not all there, is closed
    after this. Default `PT75S`."""
    loop: LoopChoice = "auto"
    """The event loop `serve` runs on: `uvloop`, `asyncio` (the standard library's), or
    `auto` (uvloop when it can be imported, else asyncio). Default `auto`."""

    @model_validator(mode="after")
    def _cert_and_key_together(self) -> HttpSettings:
        if (self.tls_cert is None) != (self.tls_key is None):
            raise ValueError(
                "CALLVAULT_HTTP__TLS_CERT and CALLVAULT_HTTP__TLS_KEY go together: set both "
                "(TLS on) or neither (TLS off)"
            )
        return self

    @property
    def tls(self) -> bool:
        """Whether ``serve`` itself speaks TLS (HTTPS and WSS)."""
        return self.tls_cert is not None

    @property
    def loopback(self) -> bool:
        """Whether ``host`` is a loopback address (127.0.0.0/8, ::1) or ``localhost``; a
        wildcard (``0.0.0.0``, ``::``) and any other name or address are not."""
        return is_loopback(self.host)


def is_loopback(host: str) -> bool:
    """Whether ``host`` names only this machine: ``localhost`` or a loopback address (an
    IPv4-mapped one too). Any other name counts as non-loopback, because what it resolves
    to can change."""
    if host.strip().rstrip(".").lower() == "localhost":
        return True
    address = ip_of(host)
    return address is not None and address.is_loopback


def ip_of(host: str) -> IPv4Address | IPv6Address | None:
    """``host`` as an IP address (brackets and spaces stripped; an IPv4-mapped IPv6 address
    as the IPv4 address it maps), or ``None`` when it is not one (a name)."""
    try:
        address = ip_address(host.strip().strip("[]"))
    except ValueError:
        return None
    if isinstance(address, IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address


class AudioSocketSettings(BaseModel):
    host: str = "127.0.0.1"
    """Address the AudioSocket listener binds. Default `127.0.0.1`."""
    port: int = Field(default=9092, ge=0, le=65535)
    """Asterisk AudioSocket TCP port; 0 turns it off. Default `9092`."""
    allow_networks: tuple[IPvAnyNetwork, ...] = (
        IPv4Network("127.0.0.0/8"),
        IPv6Network("::1/128"),
    )
    """Peer networks AudioSocket accepts (it has no auth of its own). Default loopback only."""
    max_connections: int = Field(default=2000, ge=1)
    """Open AudioSocket connections taken at once (each is one call of an Asterisk on the
    allowed networks); more get an 0xff `too_many_connections` frame and are closed.
    Default `2000`."""
    max_connections_per_peer: int = Field(default=1000, ge=1)
    """Open AudioSocket connections one IP address (IPv6: one /64) may hold at once; more get
    an 0xff `too_many_connections` frame and are closed. Default `1000`."""


class IngestSettings(BaseModel):
    flush_interval: timedelta = Field(default=timedelta(seconds=2), gt=timedelta(0))
    """Longest time audio waits in memory before it is sealed and flushed. Default `PT2S`."""
    flush_bytes: int = Field(default=64 * 1024, ge=1024, le=8 * 1024 * 1024)
    """Buffered bytes of a track that trigger a flush before the interval. Default `65536`."""
    reconnect_grace: timedelta = Field(default=timedelta(seconds=30), ge=timedelta(0))
    """How long a dropped stream's call waits for a reconnect before it is finalized.
    Default `PT30S`."""
    start_timeout: timedelta = Field(default=timedelta(minutes=5), gt=timedelta(0))
    """How long an announced call waits for its first stream before it is closed empty.
    Default `PT5M`."""
    spool_max_bytes: int | None = Field(default=None, ge=0)
    """Bytes the spool (live calls' audio, and audio waiting for the object store) may hold
    before new calls are refused (503 `spool_full`); calls already recording go on. Default:
    half the space free on the data dir's disk when `serve` starts."""
    publish_retry: timedelta = Field(default=timedelta(seconds=2), gt=timedelta(0))
    """Wait before the first retry of publishing spooled audio the object store refused;
    doubles per failed try, up to `PT30S`. Default `PT2S`."""
    handshake_timeout: timedelta = Field(default=timedelta(seconds=10), gt=timedelta(0))
    """How long a new ingest connection may take to authenticate and start its stream
    (Twilio `start`, fork metadata, AudioSocket 0x01 frame) before it is closed
    (`start_timeout`). Default `PT10S`."""


class CallsSettings(BaseModel):
    max_duration: timedelta = Field(default=timedelta(hours=4), gt=timedelta(0))
    """Longest media timeline of a call on every transport, whatever its timestamps say (a
    frame past it is refused and the call ended, its recording kept), and longest wall-clock
    time since its first stream. Default `PT4H`."""


class RtpSettings(BaseModel):
    host: str = "127.0.0.1"
    """Address the RTP/SRTP ports bind. Default `127.0.0.1`."""
    advertise_host: str | None = None
    """Address announcements hand the PBX for RTP, when `host` is a wildcard or PBXs need an
    address where `node.public_host` is a name. Default: `node.public_host`, else `host`."""
    port_min: int = Field(default=40000, ge=1024, le=65535)
    """Lowest UDP port handed out for RTP/SRTP tracks (even: RTP, odd: RTCP). Default `40000`."""
    port_max: int = Field(default=40999, ge=1024, le=65535)
    """Highest UDP port handed out for RTP/SRTP tracks. Default `40999`."""
    timeout: timedelta = Field(default=timedelta(seconds=30), gt=timedelta(0))
    """A call whose RTP stops arriving for this long is ended, and one that never sends a
    packet this long after its announcement (its ports go back to the pool). Default `PT30S`."""

    read_interval: timedelta = Field(
        default=timedelta(milliseconds=100), ge=timedelta(0), le=timedelta(milliseconds=200)
    )
    """How long the RTP sockets' datagrams may wait to be read together (one wake-up of the
    event loop reads every ready socket, at most once per interval; Linux). `PT0S`: each
    socket is read as soon as it turns readable. Default `PT0.1S` (100 ms)."""

    @model_validator(mode="after")
    def _range_is_ordered(self) -> RtpSettings:
        if self.port_min + (self.port_min % 2) + 1 > self.port_max:
            raise ValueError("port_min..port_max must hold an even port and the next (RTCP)")
        return self


class StoreSettings(BaseModel):
    url: str | None = None
    """Object store, `file:///path` or `s3://bucket[/prefix]`. Default `<data dir>/objects`."""
    endpoint_url: str | None = None
    """S3 endpoint for non-AWS stores (SeaweedFS, MinIO, Ceph). Default: AWS."""
    access_key: SecretStr | None = None
    """S3 access key id. Default: boto3's credential chain."""
    secret_key: SecretStr | None = None
    """S3 secret access key. Default: boto3's credential chain."""
    region: str = "us-east-1"
    """S3 region used for SigV4 signing. Default `us-east-1`."""
    part_size: int = Field(default=8 * 1024 * 1024, ge=5 * 1024 * 1024)
    """S3 multipart part size in bytes (S3's minimum is 5 MiB). Default 8 MiB."""


class CryptoSettings(BaseModel):
    segment_size: int = Field(default=64 * 1024, ge=1024, le=16 * 1024 * 1024)
    """Plaintext bytes per sealed segment of new objects. Default `65536`."""


class AiSettings(BaseModel):
    model: str | None = None
    """A packaged model (`base`, `tiny.en`) or a CTranslate2 model directory. Default `base`."""
    device: Literal["auto", "cpu", "cuda"] = "auto"
    """Where transcription runs: `cpu`, `cuda` or `auto` (CUDA when present). Default `auto`."""
    compute_type: Literal["auto", "int8", "int8_float16", "float16", "float32"] = "auto"
    """CTranslate2 compute type; `auto` is int8 on CPU and float16 on CUDA. Default `auto`."""
    cpu_threads: int = Field(default=1, ge=1, le=64)
    """CPU threads per worker (1 measured fastest; scale with processes). Default `1`."""
    beam_size: int = Field(default=5, ge=1, le=16)
    """Whisper's beam search width. Default `5`."""
    workers: int = Field(default=1, ge=0, le=64)
    """AI worker child processes `serve` runs and restarts, so a worker that runs out of memory
    cannot take ingest down (0: only separate `callvault worker` processes). Default `1`."""
    cache_dir: Path | None = None
    """Where a packaged model that ships in parts is assembled. Default `<data dir>/models`."""
    lease: timedelta = Field(default=timedelta(seconds=60), gt=timedelta(0))
    """A worker's lease on a job, renewed while it runs (a dead worker's ends). Default `PT60S`."""
    poll_interval: timedelta = Field(default=timedelta(seconds=1), gt=timedelta(0))
    """How often an idle worker looks for due jobs. Default `PT1S`."""
    retry_backoff: timedelta = Field(default=timedelta(seconds=30), ge=timedelta(0))
    """Wait before the first retry of a failed analysis; doubles per attempt. Default `PT30S`."""


class WebhookSettings(BaseModel):
    timeout: timedelta = Field(default=timedelta(seconds=10), gt=timedelta(0))
    """How long one webhook delivery may take. Default `PT10S`."""
    max_attempts: int = Field(default=8, ge=1, le=50)
    """Deliveries of one event before it is given up. Default `8`."""
    retry_backoff: timedelta = Field(default=timedelta(seconds=10), ge=timedelta(0))
    """Wait before the first redelivery; doubles per attempt (capped at 1 hour). Default `PT10S`."""
    allow_private: bool = False
    """Allow webhook URLs on loopback or private networks (tests, on-premise). Default `false`."""
    allow_http: bool = False
    """Allow `http://` webhook URLs, not only `https://` (tests, on-premise). Default `false`."""


class RetentionSettings(BaseModel):
    sweep_interval: timedelta = Field(default=timedelta(seconds=60), ge=timedelta(0))
    """How often `serve` runs the retention sweep (ISO-8601 duration; `PT0S`: never, for a
    deployment where `callvault retention sweep` runs from cron). Default `PT60S`."""


class AuditSettings(BaseModel):
    checkpoint_interval: timedelta = Field(default=timedelta(minutes=5), ge=timedelta(0))
    """How often `serve` signs the head of each tenant's audit chain that moved (ISO-8601
    duration; `PT0S`: never, for `callvault audit checkpoint` from cron). Default `PT5M`."""


class ConsoleSettings(BaseModel):
    """The browser console at `/console/` (`gateway.console`)."""

    enabled: bool = True
    """Serve the console (`false`: `/console/` answers 404; the API is unchanged). Default
    `true`."""
    session_lifetime: timedelta = Field(
        default=timedelta(hours=8), gt=timedelta(0), le=timedelta(days=7)
    )
    """How long a console sign-in lasts at most, however it is used (ISO-8601 duration, up
    to `P7D`). Default `PT8H`."""
    session_idle: timedelta = Field(default=timedelta(minutes=30), gt=timedelta(0))
    """A console session unused this long ends (ISO-8601 duration). Default `PT30M`."""


class LimitsSettings(BaseModel):
    """The default limits of every tenant; the operator overrides them per tenant
    (`limits` on `POST /v1/tenants` and `PATCH /v1/tenants/{tenant}`)."""

    live_calls: int = Field(default=100, ge=0)
    """Calls of a tenant live at once, on every node together (beyond: 429 `limit_exceeded`).
    Default `100`."""
    rtp_calls: int = Field(default=50, ge=0)
    """RTP/SRTP calls of a tenant live at once, on every node together. Default `50`."""
    announces_per_minute: int = Field(default=600, ge=0)
    """Calls a tenant may announce (or start unannounced) in any 60 s, on every node
    together. Default `600`."""

    def defaults(self) -> TenantLimits:
        """Every tenant's limits before the operator's overrides."""
        from storage.catalog import TenantLimits

        return TenantLimits(**self.model_dump())


class KeysSettings(BaseModel):
    """Where the tenants' key-encryption keys (KEKs) are kept."""

    provider: Literal["local", "catalog", "vault"] = "local"
    """`local`: a keyring file in the data dir (one node); `catalog`: the keyring in the
    catalog database, wrapped by the master key (every node shares it; needs PostgreSQL and
    `CALLVAULT_MASTER_KEY`, the same on every node); `vault`: an OpenBao/Vault transit key
    per tenant wraps the DEKs (the audit keys and the audit signing key stay in the keyring
    wrapped by the master key: the catalog keyring on PostgreSQL, the local one on SQLite).
    Default `local`."""
    vault_addr: str | None = None
    """OpenBao/Vault address for `provider=vault`, e.g. `https://vault:8200`. Default: none."""
    vault_token: SecretStr | None = None
    """Token of the policy in README's "Key custody with OpenBao/Vault": it may make, read,
    rotate and delete the transit keys `<vault_key_prefix>*` and encrypt and decrypt with
    them, but not make keys by encrypting (a root token is refused). Read once at start and
    never renewed by callvault (a periodic token renewed from outside, or one that outlives
    the restart cycle: docs/deploy.md). Default: none."""
    vault_mount: str = "transit"
    """Mount path of the transit secrets engine. Default `transit`."""
    vault_key_prefix: str = "callvault-"
    """Prefix of the transit key names: `<prefix><tenant>.kek` per tenant, and
    `<prefix><tenant>.destroyed` once its keys are destroyed; keep it once keys exist.
    Default `callvault-`."""
    vault_timeout: timedelta = Field(default=timedelta(seconds=5), gt=timedelta(0))
    """Timeout of one request to OpenBao/Vault. Default `PT5S`."""


class NodeSettings(BaseModel):
    """This process's place in a fleet of gateways sharing one catalog."""

    id: str | None = Field(default=None, min_length=1, max_length=80, pattern=r"^[A-Za-z0-9._-]+$")
    """The node's id in the catalog's node registry (1-80 characters: it names the stream
    leases the node holds, 34 characters more, in a 128-character column). Default: made at
    first start and kept in the data dir (`node.id`), so a restarted node is the same node."""
    public_host: str | None = None
    """Host name or address announcements hand the PBX for this node's ingest listeners
    (the full WebSocket URL `ingest.websocket_url` on `http.port`, the AudioSocket address,
    the RTP host unless `rtp.advertise_host`), so a load balancer may send announcements to
    any node. Default: the listeners' own addresses (no `websocket_url`)."""
    heartbeat_interval: timedelta = Field(default=timedelta(seconds=5), gt=timedelta(0))
    """How often `serve` writes its heartbeat to the catalog and looks for dead nodes.
    Default `PT5S`."""
    dead_after: timedelta = Field(default=timedelta(seconds=30), gt=timedelta(0))
    """A node whose heartbeat is older than this is declared dead by the others (within
    this plus one heartbeat interval): its live calls are ended with what was published,
    its jobs waiting on its spool are failed at once with the reason (by workers too),
    nothing purged; back with the same id, it publishes its spool and reopens them.
    Default `PT30S`."""


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix="CALLVAULT_",
        env_nested_delimiter="__",
        extra="ignore",
        frozen=True,
        # A validation error never repeats what it was given: the input holds the secrets
        # (store keys, the master key), and the error reaches logs (a worker child's too).
        hide_input_in_errors=True,
    )

    data_dir: Path = Path("./var")
    """Catalog, file store, keyring and spool live here. Default `./var`."""
    operator_token: SecretStr | None = None
    """Bootstrap operator token (may be one the first start printed); a new value revokes the
    previous value's token at start, and a revoked or expired value refuses to start.
    Default: generated at first start and printed once."""
    master_key: SecretStr | None = None
    """Base64 of the 32-byte key that wraps the keyring. Default: a 0600 file in the data dir
    (required with `CALLVAULT_KEYS__PROVIDER=catalog`, and with `vault` on a PostgreSQL
    catalog: the same key on every node, from a secret store; no file is made or read then)."""
    database_url: str | None = None
    """Catalog database, e.g. `postgresql://127.0.0.1:5432/db`. Default: SQLite in the data dir."""
    http: HttpSettings = HttpSettings()
    audiosocket: AudioSocketSettings = AudioSocketSettings()
    ingest: IngestSettings = IngestSettings()
    calls: CallsSettings = CallsSettings()
    rtp: RtpSettings = RtpSettings()
    store: StoreSettings = StoreSettings()
    crypto: CryptoSettings = CryptoSettings()
    ai: AiSettings = AiSettings()
    webhooks: WebhookSettings = WebhookSettings()
    retention: RetentionSettings = RetentionSettings()
    audit: AuditSettings = AuditSettings()
    limits: LimitsSettings = LimitsSettings()
    console: ConsoleSettings = ConsoleSettings()
    keys: KeysSettings = KeysSettings()
    node: NodeSettings = NodeSettings()

    @property
    def model_cache_dir(self) -> Path:
        """Where packaged models that ship in parts are assembled."""
        return self.ai.cache_dir or self.data_dir / "models"

    @property
    def store_url(self) -> str:
        """The object store URL with the data-dir default filled in."""
        return self.store.url or (self.data_dir.resolve() / "objects").as_uri()

    @property
    def catalog_url(self) -> str:
        """The SQLAlchemy async URL of the catalog with the SQLite default filled in."""
        from storage.catalog import async_database_url

        return async_database_url(self.database_url, self.data_dir)
