#error "cuda_emu: <cuda_bf16.h> is not supported by the CPU emulator; treat bf16 values as raw unsigned short bits"
