"""llama.cpp's RPC backend through ctypes: serve this machine's CPU as a device, or attach remote devices.

A loopback RPC server is a real second device with its own buffers, so device-side memory predictions
can be checked on machines without a GPU; it is also how llama.cpp spreads a model over several hosts.
libggml links libggml-rpc, so its symbols are reached through llama_cpp's handle on libllama.
"""

from __future__ import annotations

import ctypes
import socket
import struct

import llama_cpp.llama_cpp as L

from ..errors import GgtoolError
from .backend import backend

_lib = L._lib
GGML_BACKEND_DEVICE_TYPE_CPU = 0
RPC_PROTO_MAJOR = 7  # ggml/include/ggml-rpc.h of the vendored llama.cpp
_RPC_CMD_HELLO = 14
_CONN_CAPS = 24

_lib.ggml_backend_dev_by_type.argtypes = [ctypes.c_int]
_lib.ggml_backend_dev_by_type.restype = ctypes.c_void_p
_lib.ggml_backend_dev_name.argtypes = [ctypes.c_void_p]
_lib.ggml_backend_dev_name.restype = ctypes.c_char_p
_lib.ggml_backend_dev_buffer_type.argtypes = [ctypes.c_void_p]
_lib.ggml_backend_dev_buffer_type.restype = ctypes.c_void_p
_lib.ggml_backend_cpu_buffer_type.argtypes = []
_lib.ggml_backend_cpu_buffer_type.restype = ctypes.c_void_p
_lib.ggml_backend_reg_dev_count.argtypes = [ctypes.c_void_p]
_lib.ggml_backend_reg_dev_count.restype = ctypes.c_size_t
_lib.ggml_backend_reg_dev_get.argtypes = [ctypes.c_void_p, ctypes.c_size_t]
_lib.ggml_backend_reg_dev_get.restype = ctypes.c_void_p
_lib.ggml_backend_rpc_add_server.argtypes = [ctypes.c_char_p]
_lib.ggml_backend_rpc_add_server.restype = ctypes.c_void_p
_lib.ggml_backend_rpc_start_server.argtypes = [ctypes.c_char_p, ctypes.c_char_p, ctypes.c_size_t, ctypes.c_size_t,
                                               ctypes.POINTER(ctypes.c_void_p)]
_lib.ggml_backend_rpc_start_server.restype = None


def supports_rpc() -> bool:
    """Whether this llama-cpp-python was built with -DGGML_RPC=on."""
    backend()
    return bool(L.llama_supports_rpc())


def split_endpoint(endpoint: str) -> tuple[str, int]:
    """HOST:PORT → (host, port), refusing anything else with a usable message."""
    host, sep, port = endpoint.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise GgtoolError(f"RPC endpoint {endpoint!r} is not HOST:PORT", "e.g. 127.0.0.1:50052")
    return host, int(port)


def probe(endpoint: str, timeout: float = 3.0) -> None:
    """Check that an RPC server answers at `endpoint`; llama.cpp itself aborts the process when it does not."""
    host, port = split_endpoint(endpoint)
    try:
        sock = socket.create_connection((host, port), timeout=timeout)
    except OSError as e:
        raise GgtoolError(f"RPC host {endpoint} is unreachable ({e.strerror or e})",
                          "start one there with `ggtool rpc-server --host HOST --port PORT`") from None
    with sock:
        # HELLO: cmd byte, u64 size, conn caps; the reply is u64 size then major/minor/patch/pad/caps
        sock.sendall(struct.pack("<BQ", _RPC_CMD_HELLO, _CONN_CAPS) + bytes(_CONN_CAPS))
        try:
            reply = b""
            while len(reply) < 12:
                chunk = sock.recv(12 - len(reply))
                if not chunk:
                    raise GgtoolError(f"{endpoint} closed the connection: not a llama.cpp RPC server")
                reply += chunk
        except socket.timeout:
            return  # the server serves one client at a time: busy (possibly with this process) is reachable
        size, major = struct.unpack("<QB", reply[:9])
        if size != 4 + _CONN_CAPS or major != RPC_PROTO_MAJOR:
            raise GgtoolError(f"{endpoint} is not a compatible llama.cpp RPC server "
                              f"(protocol {major}, this llama.cpp speaks {RPC_PROTO_MAJOR})")


def add_server(endpoint: str) -> list[int]:
    """Register the RPC server at `endpoint` with ggml and return its devices (ggml_backend_dev_t)."""
    if not supports_rpc():
        raise GgtoolError("this llama-cpp-python was built without RPC", "run `make install` (builds it with "
                          "-DGGML_RPC=on)")
    probe(endpoint)
    reg = _lib.ggml_backend_rpc_add_server(endpoint.encode())
    if not reg:
        raise GgtoolError(f"RPC server {endpoint} offers no devices")
    return [_lib.ggml_backend_reg_dev_get(reg, i) for i in range(_lib.ggml_backend_reg_dev_count(reg))]


def device_name(dev: int) -> str:
    return _lib.ggml_backend_dev_name(dev).decode()


def device_buffer_type(dev: int) -> int:
    """The default buffer type of a device (ggml_backend_buffer_type_t)."""
    return _lib.ggml_backend_dev_buffer_type(dev)


def cpu_buffer_type() -> int:
    return _lib.ggml_backend_cpu_buffer_type()


def serve(host: str = "127.0.0.1", port: int = 50052, n_threads: int = 1, cache_dir: str | None = None) -> None:
    """Serve this machine's CPU as an RPC device at host:port; blocks for good (llama.cpp's accept loop)."""
    if not supports_rpc():
        raise GgtoolError("this llama-cpp-python was built without RPC", "run `make install`")
    endpoint = f"{host}:{port}"
    split_endpoint(endpoint)
    try:  # llama.cpp prints a line and returns when it cannot bind: say why beforehand
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            s.bind((host, port))
    except OSError as e:
        raise GgtoolError(f"cannot listen on {endpoint}: {e.strerror or e}", "choose another --port") from None
    cpu = _lib.ggml_backend_dev_by_type(GGML_BACKEND_DEVICE_TYPE_CPU)
    devices = (ctypes.c_void_p * 1)(cpu)
    _lib.ggml_backend_rpc_start_server(endpoint.encode(), cache_dir.encode() if cache_dir else None,
                                       max(1, n_threads), 1, devices)
    raise GgtoolError(f"the RPC server at {endpoint} stopped")
