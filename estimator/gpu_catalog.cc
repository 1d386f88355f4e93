#include "estimator/gpu_catalog.h"

#include <array>
#include <cctype>

#include "absl/strings/ascii.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"

namespace kvgate {
namespace {

constexpr uint64_t MiB(uint64_t mib) { return mib << 20; }
constexpr uint64_t GiB(uint64_t gib) { return gib << 30; }

// A CUDA total published as "NN.NN GiB" (torch's "total capacity", vLLM's
// total_gpu_memory), in hundredths of a GiB. Resolution +-5 MiB.
constexpr uint64_t PublishedGiB(uint64_t hundredths) {
  return hundredths * (uint64_t{1} << 30) / 100;
}

// Assumption where no CUDA figure is known: the driver reserves the same
// share as measured on the H100 80GB HBM3 (503,316,480 of 85,520,809,984
// bytes = 480 of 81,559 MiB).
constexpr uint64_t ProportionalAllocatable(uint64_t total) {
  return total - total / 81559 * 480;
}

constexpr absl::string_view kV100_16[] = {"v100", "v100-sxm2-16gb",
                                          "v100-pcie-16gb", "tesla-v100"};
constexpr absl::string_view kV100_32[] = {"v100-sxm2-32gb", "v100s",
                                          "v100s-pcie-32gb"};
constexpr absl::string_view kT4[] = {"tesla-t4", "t4-16gb"};
constexpr absl::string_view kA10G[] = {"a10g-24gb"};
constexpr absl::string_view kA10[] = {"a10-24gb"};
constexpr absl::string_view kL4[] = {"l4-24gb"};
constexpr absl::string_view kL40S[] = {"l40s-48gb"};
constexpr absl::string_view kA100_40[] = {"a100-40g", "a100-sxm4-40gb",
                                          "a100-pcie-40gb"};
constexpr absl::string_view kA100_80[] = {"a100", "a100-80g", "a100-sxm4-80gb",
                                          "a100-pcie-80gb"};
constexpr absl::string_view kH100[] = {
    "h100",      "h100-80g",  "h100-sxm",      "h100-sxm5",
    "h100-pcie", "h100-hbm3", "h100-80gb-hbm3"};
constexpr absl::string_view kH100Nvl[] = {"h100-94gb", "h100-nvl-94gb"};
constexpr absl::string_view kH200[] = {"h200-141gb", "h200-sxm"};
constexpr absl::string_view kB200[] = {"b200-180gb", "b200-192gb"};
constexpr absl::string_view kMi300x[] = {"instinct-mi300x", "mi300x-192gb"};
constexpr absl::string_view kMi325x[] = {"instinct-mi325x", "mi325x-256gb"};
constexpr absl::string_view k3090[] = {"3090", "geforce-rtx-3090"};
constexpr absl::string_view k4090[] = {"4090", "geforce-rtx-4090"};
constexpr absl::string_view kA6000[] = {"a6000", "rtx-a6000-48gb"};
constexpr absl::string_view k6000Ada[] = {"6000-ada",
                                          "rtx-6000-ada-generation"};

// One row per GPU. total_bytes: nvidia-smi's "MiB" total on current drivers
// (NVML v1), or the vendor's data sheet for AMD. bf16 TFLOP/s: dense
// figures of the vendor data sheets (half the "with sparsity" figure).
constexpr GpuSpec kGpus[] = {
    // V100 data sheet: fp16 tensor 125 TFLOP/s (SXM2), no bf16.
    // nvidia-smi: V100-SXM2-16GB 16160MiB, V100-SXM2-32GB 32510MiB.
    {"V100-16GB", kV100_16, GpuVendor::kNvidia, MiB(16160),
     ProportionalAllocatable(MiB(16160)), false, 125},
    {"V100-32GB", kV100_32, GpuVendor::kNvidia, MiB(32510),
     ProportionalAllocatable(MiB(32510)), false, 125},
    // T4 data sheet: fp16 tensor 65 TFLOP/s, no bf16. nvidia-smi 15360MiB.
    {"T4", kT4, GpuVendor::kNvidia, MiB(15360),
     ProportionalAllocatable(MiB(15360)), false, 65},
    // A10G (AWS G5): no NVIDIA data sheet; 70 is the approximate figure
    // commonly quoted, an assumption. nvidia-smi 23028MiB.
    {"A10G", kA10G, GpuVendor::kNvidia, MiB(23028),
     ProportionalAllocatable(MiB(23028)), false, 70},
    // A10 data sheet: bf16 125 (250 sparse). nvidia-smi 23028MiB.
    {"A10", kA10, GpuVendor::kNvidia, MiB(23028),
     ProportionalAllocatable(MiB(23028)), false, 125},
    // L4 data sheet: bf16 242 with sparsity. nvidia-smi 23034MiB.
    {"L4", kL4, GpuVendor::kNvidia, MiB(23034),
     ProportionalAllocatable(MiB(23034)), false, 121},
    // L40S data sheet: bf16 362.05 (733 sparse). nvidia-smi 46068MiB.
    {"L40S", kL40S, GpuVendor::kNvidia, MiB(46068),
     ProportionalAllocatable(MiB(46068)), false, 362.05},
    // A100 data sheet: bf16 312 (624 sparse). nvidia-smi 40960MiB/81920MiB.
    // CUDA totals as torch prints them: "39.50 GiB" (TianheWu/CoSeR#10),
    // "79.25 GiB" (levihsu/OOTDiffusion#235); older drivers show 39.59 and
    // 79.15.
    {"A100-40GB", kA100_40, GpuVendor::kNvidia, MiB(40960), PublishedGiB(3950),
     true, 312},
    {"A100-80GB", kA100_80, GpuVendor::kNvidia, MiB(81920), PublishedGiB(7925),
     true, 312},
    // Measured (docs/design.md, "Memory model"): NVML v1 total 85,520,809,984,
    // CUDA total
    // 85,017,493,504. H100 SXM data sheet: bf16 1,979 with sparsity.
    {"H100-80GB", kH100, GpuVendor::kNvidia, 85520809984ull, 85017493504ull,
     true, 989.4},
    // H100 NVL data sheet: bf16 1,671 with sparsity; nvidia-smi 95830MiB.
    {"H100-NVL", kH100Nvl, GpuVendor::kNvidia, MiB(95830),
     ProportionalAllocatable(MiB(95830)), false, 835.5},
    // H200 data sheet: 141 GB HBM3e, bf16 1,979 with sparsity;
    // nvidia-smi 143771MiB.
    {"H200", kH200, GpuVendor::kNvidia, MiB(143771),
     ProportionalAllocatable(MiB(143771)), false, 989.4},
    // HGX B200 data sheet: 18 PFLOP/s fp16/bf16 sparse for 8 GPUs;
    // nvidia-smi 183359MiB.
    {"B200", kB200, GpuVendor::kNvidia, MiB(183359),
     ProportionalAllocatable(MiB(183359)), false, 2250},
    // MI300X / MI325X data sheets: 192 GB HBM3 / 256 GB HBM3E (binary GiB as
    // ROCm reports them), bf16 1,307.4 dense. The ROCm reservation is not
    // known to us: the proportional assumption applies.
    {"MI300X", kMi300x, GpuVendor::kAmd, GiB(192),
     ProportionalAllocatable(GiB(192)), false, 1307.4},
    {"MI325X", kMi325x, GpuVendor::kAmd, GiB(256),
     ProportionalAllocatable(GiB(256)), false, 1307.4},
    // GA102 white paper: bf16 tensor with fp32 accumulate 71 TFLOP/s.
    // CUDA total 23.58 GiB in vLLM's log (vllm-project/vllm#10517).
    {"RTX-3090", k3090, GpuVendor::kNvidia, MiB(24576), PublishedGiB(2358),
     true, 71},
    // AD102 white paper: bf16 with fp32 accumulate 165.2 TFLOP/s.
    // nvidia-smi 24564MiB (vllm-project/vllm#7553); torch "23.65 GiB"
    // (MotrixLab/AiOS#29).
    {"RTX-4090", k4090, GpuVendor::kNvidia, MiB(24564), PublishedGiB(2365),
     true, 165.2},
    // RTX A6000 data sheet: tensor 309.7 TFLOP/s sparse; nvidia-smi 49140MiB.
    {"RTX-A6000", kA6000, GpuVendor::kNvidia, MiB(49140),
     ProportionalAllocatable(MiB(49140)), false, 154.8},
    // RTX 6000 Ada data sheet: fp8 1,457 sparse -> bf16 364.2 dense;
    // nvidia-smi 49140MiB.
    {"RTX-6000-Ada", k6000Ada, GpuVendor::kNvidia, MiB(49140),
     ProportionalAllocatable(MiB(49140)), false, 364.2},
};

// Lower case, with '_' and ' ' read as '-'.
std::string NormalizeGpuName(absl::string_view name) {
  std::string out(absl::StripAsciiWhitespace(name));
  for (char& c : out) {
    c = (c == '_' || c == ' ') ? '-' : absl::ascii_tolower(c);
  }
  return out;
}

}  // namespace

absl::string_view GpuVendorName(GpuVendor vendor) {
  return vendor == GpuVendor::kAmd ? "amd" : "nvidia";
}

absl::Span<const GpuSpec> GpuCatalog() { return kGpus; }

std::string GpuNames() {
  return absl::StrJoin(kGpus, ", ", [](std::string* out, const GpuSpec& g) {
    absl::StrAppend(out, g.name);
  });
}

absl::StatusOr<const GpuSpec*> FindGpu(absl::string_view name) {
  const std::string wanted = NormalizeGpuName(name);
  for (const GpuSpec& gpu : kGpus) {
    if (NormalizeGpuName(gpu.name) == wanted) return &gpu;
    for (absl::string_view alias : gpu.aliases) {
      if (NormalizeGpuName(alias) == wanted) return &gpu;
    }
  }
  return absl::InvalidArgumentError(
      absl::StrCat("unknown GPU '", name, "'; known: ", GpuNames(),
                   " (or give --gpu-memory-bytes)"));
}

}  // namespace kvgate
