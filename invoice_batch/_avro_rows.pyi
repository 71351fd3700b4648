from collections.abc import Callable, Iterable, Sequence

from confluent_kafka import Message

from invoice_batch.store.repository import PendingRow

class Rows:
    def __init__(
        self,
        *,
        max_text_bytes: int,
        fixed_size: int,
        time_forms: Callable[[int], tuple[str, object]],
        currencies: Iterable[str],
    ) -> None: ...
    def start(self, received_at: object, pg_copy_received_at: int = 0) -> None: ...
    def rows(self, messages: Sequence[Message]) -> list[PendingRow | None]: ...
    def copy(self, messages: Sequence[Message]) -> bytes | None: ...
    def flat(self, messages: Sequence[Message]) -> list[object] | None: ...
