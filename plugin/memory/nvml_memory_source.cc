#include "plugin/memory/nvml_memory_source.h"

#include <dlfcn.h>

#include <cstdint>
#include <utility>

#include "absl/algorithm/container.h"
#include "absl/base/thread_annotations.h"
#include "absl/status/status.h"
#include "absl/strings/ascii.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/synchronization/mutex.h"

// NVML's C types under their nvml.h tags, at global scope. The library's
// functions are called through pointers of exactly these types, so kvgate
// and any NVML (the test fake included) agree on them; with
// -fsanitize=function a struct of another name is a type mismatch.
struct nvmlDevice_st;
struct nvmlMemory_st {
  unsigned long long total;
  unsigned long long free;
  unsigned long long used;
};
struct nvmlMemory_v2_st {
  unsigned int version;
  unsigned long long total;
  unsigned long long reserved;
  unsigned long long free;
  unsigned long long used;
};

namespace kvgate {
namespace {

// --- NVML's C interface, declared here so that no NVIDIA header is needed.
// Layouts and constants follow NVML's public API reference
// (https://docs.nvidia.com/deploy/nvml-api/): nvmlReturn_t is a C enum with
// NVML_SUCCESS = 0; nvmlDevice_t is an opaque pointer; nvmlMemory_t is
// {total, free, used}, each unsigned long long; nvmlMemory_v2_t is
// {unsigned int version; total, reserved, free, used}, and its version must
// be nvmlMemory_v2 = sizeof(nvmlMemory_v2_t) | (2 << 24). A device UUID fits
// in NVML_DEVICE_UUID_V2_BUFFER_SIZE = 96 bytes.
using NvmlReturn = int;
using NvmlDevice = nvmlDevice_st*;

constexpr NvmlReturn kNvmlSuccess = 0;
constexpr NvmlReturn kNvmlErrorInvalidArgument = 2;
constexpr NvmlReturn kNvmlErrorNotSupported = 3;
constexpr NvmlReturn kNvmlErrorNotFound = 6;
constexpr NvmlReturn kNvmlErrorFunctionNotFound = 13;
constexpr NvmlReturn kNvmlErrorArgumentVersionMismatch = 25;

using NvmlMemoryV1 = nvmlMemory_st;
using NvmlMemoryV2 = nvmlMemory_v2_st;

constexpr unsigned int kNvmlMemoryV2Version =
    static_cast<unsigned int>(sizeof(NvmlMemoryV2)) | (2u << 24);
constexpr unsigned int kNvmlUuidBufferSize = 96;

// The entry points kvgate uses. All are required except
// device_get_memory_info_v2, which older drivers lack.
struct NvmlApi {
  NvmlReturn (*init_v2)() = nullptr;
  NvmlReturn (*shutdown)() = nullptr;
  const char* (*error_string)(NvmlReturn) = nullptr;
  NvmlReturn (*device_get_count_v2)(unsigned int*) = nullptr;
  NvmlReturn (*device_get_handle_by_index_v2)(unsigned int,
                                              NvmlDevice*) = nullptr;
  NvmlReturn (*device_get_handle_by_uuid)(const char*, NvmlDevice*) = nullptr;
  NvmlReturn (*device_get_uuid)(NvmlDevice, char*, unsigned int) = nullptr;
  NvmlReturn (*device_get_index)(NvmlDevice, unsigned int*) = nullptr;
  NvmlReturn (*device_get_memory_info)(NvmlDevice, NvmlMemoryV1*) = nullptr;
  NvmlReturn (*device_get_memory_info_v2)(NvmlDevice, NvmlMemoryV2*) = nullptr;
};

// The loaded, initialized library. Its destructor undoes what Load did.
class NvmlLibrary {
 public:
  static absl::StatusOr<std::unique_ptr<NvmlLibrary>> Load(
      const std::string& path);

  NvmlLibrary(const NvmlLibrary&) = delete;
  NvmlLibrary& operator=(const NvmlLibrary&) = delete;
  ~NvmlLibrary() {
    if (initialized_) api_.shutdown();
    dlclose(handle_);
  }

  const NvmlApi& api() const { return api_; }

  // "GPU is lost (NVML error 15)".
  std::string Describe(NvmlReturn code) const {
    const char* text = api_.error_string(code);
    return absl::StrCat(text != nullptr ? text : "unknown error",
                        " (NVML error ", code, ")");
  }

 private:
  explicit NvmlLibrary(void* handle) : handle_(handle) {}

  // Resolves every entry point; returns the names of required ones missing.
  std::vector<std::string> Bind();

  void* handle_;
  NvmlApi api_;
  bool initialized_ = false;
};

template <typename Fn>
bool BindSymbol(void* handle, const char* name, Fn*& fn) {
  fn = reinterpret_cast<Fn*>(dlsym(handle, name));
  return fn != nullptr;
}

std::vector<std::string> NvmlLibrary::Bind() {
  std::vector<std::string> missing;
  auto require = [&](const char* name, auto*& fn) {
    if (!BindSymbol(handle_, name, fn)) missing.push_back(name);
  };
  require("nvmlInit_v2", api_.init_v2);
  require("nvmlShutdown", api_.shutdown);
  require("nvmlErrorString", api_.error_string);
  require("nvmlDeviceGetCount_v2", api_.device_get_count_v2);
  require("nvmlDeviceGetHandleByIndex_v2", api_.device_get_handle_by_index_v2);
  require("nvmlDeviceGetHandleByUUID", api_.device_get_handle_by_uuid);
  require("nvmlDeviceGetUUID", api_.device_get_uuid);
  require("nvmlDeviceGetIndex", api_.device_get_index);
  require("nvmlDeviceGetMemoryInfo", api_.device_get_memory_info);
  BindSymbol(handle_, "nvmlDeviceGetMemoryInfo_v2",
             api_.device_get_memory_info_v2);  // Optional.
  return missing;
}

absl::StatusOr<std::unique_ptr<NvmlLibrary>> NvmlLibrary::Load(
    const std::string& path) {
  void* handle = dlopen(path.c_str(), RTLD_NOW | RTLD_LOCAL);
  if (handle == nullptr) {
    const char* why = dlerror();
    return absl::FailedPreconditionError(absl::StrCat(
        "nvml: cannot load ", path, ": ", why != nullptr ? why : "unknown",
        "; is the NVIDIA driver installed and "
        "NVIDIA_DRIVER_CAPABILITIES=utility set?"));
  }
  std::unique_ptr<NvmlLibrary> library(new NvmlLibrary(handle));
  std::vector<std::string> missing = library->Bind();
  if (!missing.empty()) {
    return absl::FailedPreconditionError(
        absl::StrCat("nvml: ", path, " lacks ", absl::StrJoin(missing, ", "),
                     "; it is not NVML or its driver is too old"));
  }
  NvmlReturn rc = library->api_.init_v2();
  if (rc != kNvmlSuccess) {
    return absl::FailedPreconditionError(absl::StrCat(
        "nvml: nvmlInit_v2 failed: ", library->Describe(rc),
        "; is the NVIDIA driver loaded and a GPU given to this container "
        "(NVIDIA_VISIBLE_DEVICES)?"));
  }
  library->initialized_ = true;
  return library;
}

// One device being watched.
struct WatchedDevice {
  NvmlDevice handle = nullptr;
  std::string uuid;
  uint32_t index = 0;
};

// "2 GPUs: 0=GPU-aaaa, 1=GPU-bbbb", best effort, for error messages.
std::string DescribeVisibleDevices(const NvmlLibrary& library,
                                   unsigned int count) {
  if (count == 0) return "the driver shows no GPUs";
  std::vector<std::string> names;
  for (unsigned int i = 0; i < count; ++i) {
    NvmlDevice handle = nullptr;
    char uuid[kNvmlUuidBufferSize] = {};
    const NvmlApi& api = library.api();
    if (api.device_get_handle_by_index_v2(i, &handle) == kNvmlSuccess &&
        api.device_get_uuid(handle, uuid, sizeof(uuid)) == kNvmlSuccess) {
      names.push_back(absl::StrCat(i, "=", uuid));
    } else {
      names.push_back(absl::StrCat(i, "=(unreadable)"));
    }
  }
  return absl::StrCat("the driver shows ", count, " GPU", count == 1 ? "" : "s",
                      ": ", absl::StrJoin(names, ", "));
}

absl::StatusOr<NvmlDevice> FindDevice(const NvmlLibrary& library,
                                      const std::string& name,
                                      unsigned int count) {
  const NvmlApi& api = library.api();
  NvmlDevice handle = nullptr;
  uint32_t index = 0;
  if (absl::c_all_of(name, absl::ascii_isdigit) &&
      absl::SimpleAtoi(name, &index)) {
    if (index >= count) {
      return absl::NotFoundError(
          absl::StrCat("nvml: no GPU with index ", index, "; ",
                       DescribeVisibleDevices(library, count)));
    }
    NvmlReturn rc = api.device_get_handle_by_index_v2(index, &handle);
    if (rc != kNvmlSuccess) {
      return absl::FailedPreconditionError(absl::StrCat(
          "nvml: cannot open GPU index ", index, ": ", library.Describe(rc)));
    }
    return handle;
  }
  NvmlReturn rc = api.device_get_handle_by_uuid(name.c_str(), &handle);
  if (rc == kNvmlErrorNotFound || rc == kNvmlErrorInvalidArgument) {
    return absl::NotFoundError(
        absl::StrCat("nvml: no GPU with UUID \"", name, "\"; ",
                     DescribeVisibleDevices(library, count)));
  }
  if (rc != kNvmlSuccess) {
    return absl::FailedPreconditionError(absl::StrCat(
        "nvml: cannot open GPU ", name, ": ", library.Describe(rc)));
  }
  return handle;
}

absl::StatusOr<WatchedDevice> OpenDevice(const NvmlLibrary& library,
                                         const std::string& name,
                                         unsigned int count) {
  if (name.empty()) {
    return absl::InvalidArgumentError(
        "nvml: empty device name; give an index such as \"0\" or a UUID "
        "such as \"GPU-...\" (nvidia-smi -L)");
  }
  absl::StatusOr<NvmlDevice> handle = FindDevice(library, name, count);
  if (!handle.ok()) return handle.status();
  WatchedDevice device;
  device.handle = *handle;
  char uuid[kNvmlUuidBufferSize] = {};
  NvmlReturn rc = library.api().device_get_uuid(*handle, uuid, sizeof(uuid));
  if (rc != kNvmlSuccess) {
    return absl::FailedPreconditionError(
        absl::StrCat("nvml: cannot read the UUID of GPU ", name, ": ",
                     library.Describe(rc)));
  }
  device.uuid = uuid;
  unsigned int index = 0;
  rc = library.api().device_get_index(*handle, &index);
  if (rc != kNvmlSuccess) {
    return absl::FailedPreconditionError(
        absl::StrCat("nvml: cannot read the index of GPU ", name, ": ",
                     library.Describe(rc)));
  }
  device.index = index;
  return device;
}

class NvmlMemorySource final : public MemorySource {
 public:
  NvmlMemorySource(std::unique_ptr<NvmlLibrary> library,
                   std::vector<WatchedDevice> devices)
      : library_(std::move(library)),
        devices_(std::move(devices)),
        use_v2_(library_->api().device_get_memory_info_v2 != nullptr) {}

  absl::string_view Name() const override { return "nvml"; }
  bool IsLive() const override { return true; }

  absl::StatusOr<std::vector<DeviceMemory>> Read() override {
    absl::MutexLock lock(&mu_);
    std::vector<DeviceMemory> result;
    result.reserve(devices_.size());
    for (const WatchedDevice& device : devices_) {
      absl::StatusOr<DeviceMemory> memory = ReadDevice(device);
      if (!memory.ok()) return memory.status();
      result.push_back(*std::move(memory));
    }
    return result;
  }

 private:
  absl::StatusOr<DeviceMemory> ReadDevice(const WatchedDevice& device)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    const NvmlApi& api = library_->api();
    DeviceMemory memory;
    memory.uuid = device.uuid;
    memory.index = device.index;
    if (use_v2_) {
      NvmlMemoryV2 info = {};
      info.version = kNvmlMemoryV2Version;
      NvmlReturn rc = api.device_get_memory_info_v2(device.handle, &info);
      if (rc == kNvmlSuccess) {
        memory.total_bytes = info.total;
        memory.free_bytes = info.free;
        memory.used_bytes = info.used;
        memory.reserved_bytes = info.reserved;
        return memory;
      }
      // A driver that exports the v2 call but cannot serve it (an older
      // struct version, a vGPU) still answers the v1 call.
      if (rc != kNvmlErrorNotSupported && rc != kNvmlErrorFunctionNotFound &&
          rc != kNvmlErrorArgumentVersionMismatch) {
        return ReadError(device, rc);
      }
      use_v2_ = false;
    }
    NvmlMemoryV1 info = {};
    NvmlReturn rc = api.device_get_memory_info(device.handle, &info);
    if (rc != kNvmlSuccess) return ReadError(device, rc);
    memory.total_bytes = info.total;
    memory.free_bytes = info.free;
    memory.used_bytes = info.used;
    return memory;
  }

  absl::Status ReadError(const WatchedDevice& device, NvmlReturn rc) const {
    return absl::UnavailableError(
        absl::StrCat("nvml: cannot read memory of GPU ", device.index, " (",
                     device.uuid, "): ", library_->Describe(rc)));
  }

  const std::unique_ptr<NvmlLibrary> library_;
  const std::vector<WatchedDevice> devices_;
  absl::Mutex mu_;
  bool use_v2_ ABSL_GUARDED_BY(mu_);
};

}  // namespace

absl::StatusOr<std::unique_ptr<MemorySource>> MakeNvmlMemorySource(
    const NvmlOptions& options) {
  absl::StatusOr<std::unique_ptr<NvmlLibrary>> library =
      NvmlLibrary::Load(options.library_path);
  if (!library.ok()) return library.status();

  unsigned int count = 0;
  NvmlReturn rc = (*library)->api().device_get_count_v2(&count);
  if (rc != kNvmlSuccess) {
    return absl::FailedPreconditionError(
        absl::StrCat("nvml: cannot count GPUs: ", (*library)->Describe(rc)));
  }

  const std::vector<std::string> names =
      options.devices.empty() ? std::vector<std::string>{"0"} : options.devices;
  std::vector<WatchedDevice> devices;
  for (const std::string& name : names) {
    absl::StatusOr<WatchedDevice> device = OpenDevice(**library, name, count);
    if (!device.ok()) return device.status();
    for (size_t i = 0; i < devices.size(); ++i) {
      if (devices[i].uuid == device->uuid) {
        return absl::InvalidArgumentError(absl::StrCat(
            "nvml: devices \"", names[i], "\" and \"", name,
            "\" are the same GPU (", device->uuid, "); list each GPU once"));
      }
    }
    devices.push_back(*std::move(device));
  }

  auto source = std::make_unique<NvmlMemorySource>(*std::move(library),
                                                   std::move(devices));
  // Read once so that a device the driver cannot report fails here, at
  // start-up, rather than at the first poll.
  absl::StatusOr<std::vector<DeviceMemory>> first = source->Read();
  if (!first.ok()) {
    return absl::FailedPreconditionError(first.status().message());
  }
  return source;
}

}  // namespace kvgate
