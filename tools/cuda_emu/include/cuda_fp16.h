#error "cuda_emu: <cuda_fp16.h> is not supported by the CPU emulator; treat fp16 values as raw unsigned short bits"
