"""xenlab: a networked emulation of a Xen host (docs/ARCHITECTURE.md is the map)."""
import os

# grpcio (1.85) writes its INFO log to standard error unless told otherwise:
# a line for every GOAWAY a channel receives, which an idle guest agent sends
# by design (xenlab.domain.agent_activation). gRPC reads the variable when it
# is imported, so it is set here, before any module of ours imports grpc; a
# user's own GRPC_VERBOSITY wins.
os.environ.setdefault("GRPC_VERBOSITY", "ERROR")
