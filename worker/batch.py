"""Grouping chunks into padded batches for one forward pass each."""


def bucket_batches(lengths: list[int], max_tokens: int) -> list[list[int]]:
    """Indices of `lengths` grouped into batches of similar length (none padded past twice its own
    length), each padded to its longest within `max_tokens` (count x longest); a single item
    longer than that is a batch alone.

    Sorted by length, so padding is small where lengths cluster (a chunker's full chunks all
    share one length; a document's last chunk is shorter)."""
    if max_tokens < 1:
        raise ValueError(f"max_tokens: must be positive, got {max_tokens}")
    batches: list[list[int]] = []
    for index in sorted(range(len(lengths)), key=lambda i: lengths[i]):
        batch = batches[-1] if batches else None
        fits = batch is not None and (len(batch) + 1) * lengths[index] <= max_tokens
        if fits and lengths[index] <= 2 * lengths[batch[0]]:
            batch.append(index)
        else:
            batches.append([index])
    return batches
