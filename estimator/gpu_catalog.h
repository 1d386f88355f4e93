// GpuCatalog: memory and compute of common data-centre and workstation GPUs.
//
// Two memory figures matter and differ:
//  - total_bytes: what NVML (nvidia-smi, v1 API) or rocm-smi reports as the
//    device's memory;
//  - allocatable_bytes: what CUDA (cudaMemGetInfo's total, torch's "total
//    capacity", vLLM's total_gpu_memory) reports, i.e. total minus the part
//    the driver reserves before any process runs. Capacity planning, like
//    vLLM's gpu_memory_utilization, applies to this figure.
// Measured on an H100 80GB HBM3 (driver 580): total 85,520,809,984, reserved
// 503,316,480 (0.5885 %), allocatable 85,017,493,504. Where no measured or
// published CUDA figure exists, allocatable assumes the same proportion is
// reserved (see the table in gpu_catalog.cc). The reservation depends on the
// driver version, so a figure can differ by a few hundred MiB on another
// machine: pass the exact bytes (`--gpu-memory-bytes`) where it matters.
#ifndef KVGATE_ESTIMATOR_GPU_CATALOG_H_
#define KVGATE_ESTIMATOR_GPU_CATALOG_H_

#include <cstdint>
#include <string>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/types/span.h"

namespace kvgate {

enum class GpuVendor { kNvidia, kAmd };

// "nvidia" or "amd".
absl::string_view GpuVendorName(GpuVendor vendor);

struct GpuSpec {
  // Canonical name, e.g. "H100-80GB".
  absl::string_view name;
  // Other spellings accepted by FindGpu(), e.g. "h100", "H100-SXM".
  absl::Span<const absl::string_view> aliases;
  GpuVendor vendor = GpuVendor::kNvidia;
  // Device memory as NVML / rocm-smi reports it.
  uint64_t total_bytes = 0;
  // Memory a process can allocate (CUDA's total); see the header comment.
  uint64_t allocatable_bytes = 0;
  // True when allocatable_bytes was measured or published, false when it
  // follows the proportional assumption.
  bool allocatable_measured = false;
  // Dense (no sparsity) bf16 tensor throughput in TFLOP/s from the vendor's
  // data sheet; for GPUs without bf16 (V100, T4) the fp16 tensor figure.
  double bf16_dense_tflops = 0;
};

// Every GPU known, in table order (vendor, then generation).
absl::Span<const GpuSpec> GpuCatalog();

// Finds a GPU by its name or an alias, ignoring case and treating '-', '_'
// and ' ' alike ("h100", "H100_80GB", "h100 sxm" all find "H100-80GB").
// InvalidArgument naming the value and listing the known names otherwise.
absl::StatusOr<const GpuSpec*> FindGpu(absl::string_view name);

// The known canonical names, comma-separated, for help texts.
std::string GpuNames();

}  // namespace kvgate

#endif  // KVGATE_ESTIMATOR_GPU_CATALOG_H_
