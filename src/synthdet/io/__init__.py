"""Ground floor: bytes → pixels (one decode chain for every format, EXIF, modes, bombs, the social-media chain),
files written whole or not at all, content hashes and the cache location. Imports nothing else of synthdet."""
