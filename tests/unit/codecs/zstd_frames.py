"""Hand-built zstd frames for decompression-bomb tests."""

from __future__ import annotations

_MAGIC = (0xFD2FB528).to_bytes(4, "little")
_BLOCK = 128 * 1024


def rle_bomb(total: int, *, declared: int | None, checksum: bool = True) -> bytes:
    """Return a zstd frame of RLE blocks that expands to ``total`` bytes of spaces.

    Each 128 KiB block costs 4 bytes, so 1 GiB fits in 32 KiB. ``declared`` is the content
    size written in the header (None: no content size); it may lie. With ``checksum`` the flag
    is set and 4 (wrong) checksum bytes end the frame: a decoder must fail before reaching them.
    """
    descriptor = (0xC0 if declared is not None else 0x00) | (0x04 if checksum else 0x00)
    frame = bytearray(_MAGIC + bytes([descriptor, 7 << 3]))  # window 2**17 = one block
    if declared is not None:
        frame += declared.to_bytes(8, "little")
    count = total // _BLOCK
    for index in range(count):
        last = 1 if index == count - 1 else 0
        frame += (last | (1 << 1) | (_BLOCK << 3)).to_bytes(3, "little") + b" "
    if checksum:
        frame += b"\x00\x00\x00\x00"
    return bytes(frame)
