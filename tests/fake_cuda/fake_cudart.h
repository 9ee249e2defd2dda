// Internals shared by the two sources of the fake CUDA runtime (fake_cudart.cc:
// devices, streams, events, errors; fake_cudart_memory.cc: memory, copies, pointer
// attributes, IPC memory). Not an API: tests use the exported cuda* functions.
#pragma once
#include <cstddef>
#include <cstdint>
#include <functional>
#include <map>
#include <mutex>
#include <type_traits>

#include "fake_common.h"
#include "transport/cuda_api.h"

// Every entry point hcomm resolves, declared with exactly hcomm's (toolkit-checked)
// function type: a definition whose type differs does not compile.
#define HCOMM_FAKE_DECLARE(name) extern "C" std::remove_pointer_t<hcomm::cuda::name##Fn> cuda##name;
HCOMM_CUDART_FUNCTIONS(HCOMM_FAKE_DECLARE)
#undef HCOMM_FAKE_DECLARE

namespace fake_cudart {

using namespace hcomm::cuda;

int deviceCount();
extern thread_local int currentDevice;  // per host thread, as CUDA's

// Queues op on the stream (after the legacy default stream's implicit dependencies).
Error enqueue(Stream handle, std::function<void()> op);

// Runs `release` once every stream of `device` (-1: of every device) has finished the
// work queued so far, without blocking the caller.
void releaseLater(int device, std::function<void()> release);

}  // namespace fake_cudart
