//! Serving the boot image to PXE-booting servers (work in progress: see issue 13).
