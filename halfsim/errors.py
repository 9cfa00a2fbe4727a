"""Error types. Everything a user can cause raises a HalfsimError subclass (a ValueError),
which the CLI prints as one line and turns into exit code 2."""


class HalfsimError(ValueError):
    """Bad usage or bad input: the message names the problem in one line."""


class ModelError(HalfsimError):
    """The model file cannot be read, is corrupt, or uses something unsupported."""


class UnsupportedOpError(ModelError):
    def __init__(self, op_type: str, domain: str, opset: int, node: str = ""):
        dom = domain or "ai.onnx"
        where = f" (node {node!r})" if node else ""
        super().__init__(f"unsupported op {op_type} in domain {dom} at opset {opset}{where}")
        self.op_type, self.domain, self.opset = op_type, domain, opset

    def with_detail(self, detail: str) -> "UnsupportedOpError":
        self.args = (f"{self.args[0]}: {detail}",)
        return self


class InputError(HalfsimError):
    """Feeds do not fit the model: missing, extra, wrong dtype, rank or shape."""


class ExecutionError(HalfsimError):
    """A node failed while running (for example a shape that contradicts the graph)."""


class CheckFailed(Exception):
    """A check the user asked for (a tolerance) was not met: exit code 1, not a usage error."""
