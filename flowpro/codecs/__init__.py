"""Pure codecs run at node boundaries: structured args, recorded output and encryption.

No I/O here: every function maps values or bytes to values or bytes, so bad input fails in the
caller's stack (at insert, or when a return value is packed) rather than later in a worker loop.
"""
