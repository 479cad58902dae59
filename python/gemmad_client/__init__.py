"""gemmad-client: the protobuf classes of gemmad's RPC (gemma_pb2, generated at install time from
proto/gemma.proto) and a small blocking client over ZeroMQ."""
try:
    from . import gemma_pb2
except ImportError as e:  # a source checkout that was never built
    raise ImportError("gemmad_client.gemma_pb2 is missing: install the package (pip install ./python), "
                      "which generates it from proto/gemma.proto") from e

from .client import PROTOCOL_VERSION, Chunk, Client, GemmadError, Result, Stream, TokenLogprob, TopLogprob, Usage

__all__ = ["Client", "Stream", "Chunk", "Result", "Usage", "TokenLogprob", "TopLogprob", "GemmadError",
           "PROTOCOL_VERSION", "gemma_pb2"]
__version__ = "0.1.0"
