import mmap, time, ctypes, sys
# Two adjacent anonymous areas that cannot merge: one made elsewhere and moved next to the other.
libc = ctypes.CDLL(None, use_errno=True)
libc.mmap.restype = ctypes.c_void_p
libc.mmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int, ctypes.c_int, ctypes.c_long]
libc.mremap.restype = ctypes.c_void_p
libc.mremap.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_size_t, ctypes.c_int, ctypes.c_void_p]
P=4096
# b first: made after the hole, it could land in it (the hole is the highest free gap).
b = libc.mmap(None, 4*P, 3, 0x22, -1, 0)
a = libc.mmap(None, 8*P, 3, 0x22, -1, 0)
libc.munmap(ctypes.c_void_p(a + 4*P), 4*P)
ctypes.memset(b, 7, 4*P); ctypes.memset(a, 5, 4*P)
r = libc.mremap(b, 4*P, 4*P, 3, a + 4*P)
assert r == a + 4*P, (hex(r), hex(a))
open('ready','w').write(hex(a))
while True: time.sleep(0.1)
