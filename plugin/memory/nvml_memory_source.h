// A memory source that reads the NVIDIA driver's figures through NVML.
//
// The library (libnvidia-ml.so.1, which the driver installs and the NVIDIA
// container runtime mounts when NVIDIA_DRIVER_CAPABILITIES includes
// "utility") is loaded at run time with dlopen, so kvgate builds and runs
// without NVIDIA headers or libraries; only this source needs them.
//
// Figures are the driver's: `total_bytes` is the physical memory, including
// what the driver reserves for itself. Where the driver offers
// nvmlDeviceGetMemoryInfo_v2 the reservation is reported in
// `reserved_bytes` and left out of `used_bytes`; with the older call it is
// part of `used_bytes` and `reserved_bytes` is 0. On an H100 80GB HBM3
// (driver 580) total is 85,520,809,984 bytes, of which 503,316,480 are
// reserved; see docs/design.md, "GPU memory as the driver reports it".
#ifndef KVGATE_PLUGIN_MEMORY_NVML_MEMORY_SOURCE_H_
#define KVGATE_PLUGIN_MEMORY_NVML_MEMORY_SOURCE_H_

#include <memory>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "plugin/memory/memory_source.h"

namespace kvgate {

struct NvmlOptions {
  // Passed to dlopen as is: a bare name searches the loader's path.
  std::string library_path = "libnvidia-ml.so.1";
  // The devices to watch, in the order Read() reports them. Each is an NVML
  // device index ("0", "1", ...; NVML order, which ignores
  // CUDA_VISIBLE_DEVICES) or a UUID as nvidia-smi -L prints it ("GPU-...",
  // "MIG-..."). Empty means device index 0.
  std::vector<std::string> devices;
};

// Loads NVML, initializes it and opens every device in `options.devices`,
// reading each once. Fails with one message that says what to fix:
//   FAILED_PRECONDITION  the library cannot be loaded, lacks a function, or
//                        fails to initialize, or a device cannot be read;
//   NOT_FOUND            a device index or UUID the driver does not show
//                        (the message lists the devices it does show);
//   INVALID_ARGUMENT     an empty device name, or one GPU named twice.
// The returned source shuts NVML down and unloads it when destroyed. Its
// Read() fails with UNAVAILABLE, naming the device and NVML's error, when the
// driver cannot report a device (for example NVML_ERROR_GPU_IS_LOST).
absl::StatusOr<std::unique_ptr<MemorySource>> MakeNvmlMemorySource(
    const NvmlOptions& options);

}  // namespace kvgate

#endif  // KVGATE_PLUGIN_MEMORY_NVML_MEMORY_SOURCE_H_
