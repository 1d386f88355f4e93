// A stand-in for libnvidia-ml.so.1, built as a shared library for tests of
// the NVML memory source. It exports the NVML functions kvgate calls, under
// their C names, and answers from a script file.
//
// The script is the file named by the environment variable
// KVGATE_FAKE_NVML_SCRIPT. It is read afresh on every call, so a test changes
// what the "driver" reports by rewriting the file. One directive per line;
// '#' starts a comment; numbers are decimal:
//
//   init_error <code>                          nvmlInit_v2 returns <code>
//   device <uuid> <total> <free> [<reserved>]  one GPU; its index is the
//                                              order of the device lines
//   read_error <uuid> <code>                   both memory calls return
//                                              <code> for that GPU
//   v2_error <code>                            nvmlDeviceGetMemoryInfo_v2
//                                              returns <code> for every GPU
//
// Memory: the v1 call reports used = total - free (the reservation counts as
// used); the v2 call reports `reserved` apart and used = total - free -
// reserved. The v2 call checks the struct version kvgate passes against
// NVML's nvmlMemory_v2 constant, 0x02000028 (40 bytes, version 2).
//
// Codes follow nvmlReturn_t: 0 success, 1 uninitialized, 2 invalid argument,
// 3 not supported, 6 not found, 7 insufficient size, 9 driver not loaded,
// 15 GPU is lost, 25 argument version mismatch, 999 unknown. When the
// script is missing, nvmlInit_v2 returns 9; when it has a line it cannot
// parse, 999 (and the line goes to stderr).
//
// Like NVML, every call but nvmlInit_v2 and nvmlErrorString fails with 1
// until nvmlInit_v2 succeeds, and nvmlShutdown balances each nvmlInit_v2.
// kvgate_fake_nvml_init_count() tells tests how many inits are outstanding.
//
// Built twice: fake_nvml, and fake_nvml_v1 (KVGATE_FAKE_NVML_NO_V2), which
// lacks nvmlDeviceGetMemoryInfo_v2 as drivers before it did.
#include <atomic>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <sstream>
#include <string>
#include <vector>

// NVML's C types under their nvml.h tags, at global scope. The library's
// functions are called through pointers of exactly these types, so kvgate
// (plugin/nvml_memory_source.cc) and this fake agree on them; with
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

namespace {

constexpr int kSuccess = 0;
constexpr int kUninitialized = 1;
constexpr int kInvalidArgument = 2;
constexpr int kNotFound = 6;
constexpr int kInsufficientSize = 7;
constexpr int kDriverNotLoaded = 9;
constexpr int kArgumentVersionMismatch = 25;
constexpr int kUnknown = 999;
constexpr unsigned int kMemoryV2Version = 0x02000028;

struct FakeDevice {
  std::string uuid;
  unsigned long long total = 0;
  unsigned long long free = 0;
  unsigned long long reserved = 0;
  int read_error = kSuccess;
};

struct Script {
  int load_error = kSuccess;  // Set when the script is missing or malformed.
  int init_error = kSuccess;
  int v2_error = kSuccess;
  std::vector<FakeDevice> devices;
};

FakeDevice* FindDevice(Script& script, const std::string& uuid) {
  for (FakeDevice& device : script.devices) {
    if (device.uuid == uuid) return &device;
  }
  return nullptr;
}

bool ParseLine(const std::string& line, Script& script) {
  std::istringstream in(line.substr(0, line.find('#')));
  std::string directive;
  if (!(in >> directive)) return true;  // Blank or comment.
  if (directive == "init_error")
    return static_cast<bool>(in >> script.init_error);
  if (directive == "v2_error") return static_cast<bool>(in >> script.v2_error);
  if (directive == "device") {
    FakeDevice device;
    if (!(in >> device.uuid >> device.total >> device.free)) return false;
    in >> device.reserved;  // Optional.
    script.devices.push_back(device);
    return true;
  }
  if (directive == "read_error") {
    std::string uuid;
    int code = 0;
    if (!(in >> uuid >> code)) return false;
    FakeDevice* device = FindDevice(script, uuid);
    if (device == nullptr) return false;
    device->read_error = code;
    return true;
  }
  return false;
}

Script LoadScript() {
  Script script;
  const char* path = std::getenv("KVGATE_FAKE_NVML_SCRIPT");
  std::ifstream file(path != nullptr ? path : "");
  if (!file) {
    script.load_error = kDriverNotLoaded;
    return script;
  }
  std::string line;
  while (std::getline(file, line)) {
    if (!ParseLine(line, script)) {
      std::fprintf(stderr, "fake_nvml: cannot parse script line: %s\n",
                   line.c_str());
      script.load_error = kUnknown;
    }
  }
  return script;
}

std::atomic<int> init_count{0};

using Handle = nvmlDevice_st*;

Handle HandleOf(size_t index) { return reinterpret_cast<Handle>(index + 1); }

// The device behind a handle, or nullptr.
FakeDevice* DeviceOf(Script& script, Handle handle) {
  size_t index = reinterpret_cast<uintptr_t>(handle);
  if (index == 0 || index > script.devices.size()) return nullptr;
  return &script.devices[index - 1];
}

using MemoryV1 = nvmlMemory_st;
using MemoryV2 = nvmlMemory_v2_st;

}  // namespace

extern "C" {

int kvgate_fake_nvml_init_count() { return init_count.load(); }

int nvmlInit_v2() {
  Script script = LoadScript();
  if (script.load_error != kSuccess) return script.load_error;
  if (script.init_error != kSuccess) return script.init_error;
  ++init_count;
  return kSuccess;
}

int nvmlShutdown() {
  int count = init_count.load();
  while (count > 0 && !init_count.compare_exchange_weak(count, count - 1)) {
  }
  return count > 0 ? kSuccess : kUninitialized;
}

const char* nvmlErrorString(int code) {
  switch (code) {
    case 0:
      return "Success";
    case 1:
      return "Uninitialized";
    case 2:
      return "Invalid Argument";
    case 3:
      return "Not Supported";
    case 6:
      return "Not Found";
    case 7:
      return "Insufficient Size";
    case 9:
      return "Driver Not Loaded";
    case 15:
      return "GPU is lost";
    case 25:
      return "Argument version mismatch";
    default:
      return "Unknown Error";
  }
}

int nvmlDeviceGetCount_v2(unsigned int* count) {
  if (init_count.load() == 0) return kUninitialized;
  if (count == nullptr) return kInvalidArgument;
  *count = static_cast<unsigned int>(LoadScript().devices.size());
  return kSuccess;
}

int nvmlDeviceGetHandleByIndex_v2(unsigned int index, Handle* handle) {
  if (init_count.load() == 0) return kUninitialized;
  if (handle == nullptr || index >= LoadScript().devices.size()) {
    return kInvalidArgument;
  }
  *handle = HandleOf(index);
  return kSuccess;
}

int nvmlDeviceGetHandleByUUID(const char* uuid, Handle* handle) {
  if (init_count.load() == 0) return kUninitialized;
  if (uuid == nullptr || handle == nullptr) return kInvalidArgument;
  Script script = LoadScript();
  for (size_t i = 0; i < script.devices.size(); ++i) {
    if (script.devices[i].uuid == uuid) {
      *handle = HandleOf(i);
      return kSuccess;
    }
  }
  return kNotFound;
}

int nvmlDeviceGetUUID(Handle handle, char* uuid, unsigned int length) {
  if (init_count.load() == 0) return kUninitialized;
  Script script = LoadScript();
  FakeDevice* device = DeviceOf(script, handle);
  if (device == nullptr || uuid == nullptr) return kInvalidArgument;
  if (device->uuid.size() + 1 > length) return kInsufficientSize;
  std::memcpy(uuid, device->uuid.c_str(), device->uuid.size() + 1);
  return kSuccess;
}

int nvmlDeviceGetIndex(Handle handle, unsigned int* index) {
  if (init_count.load() == 0) return kUninitialized;
  Script script = LoadScript();
  if (DeviceOf(script, handle) == nullptr || index == nullptr) {
    return kInvalidArgument;
  }
  *index = static_cast<unsigned int>(reinterpret_cast<uintptr_t>(handle) - 1);
  return kSuccess;
}

int nvmlDeviceGetMemoryInfo(Handle handle, MemoryV1* memory) {
  if (init_count.load() == 0) return kUninitialized;
  Script script = LoadScript();
  FakeDevice* device = DeviceOf(script, handle);
  if (device == nullptr || memory == nullptr) return kInvalidArgument;
  if (device->read_error != kSuccess) return device->read_error;
  memory->total = device->total;
  memory->free = device->free;
  memory->used = device->total - device->free;
  return kSuccess;
}

#ifndef KVGATE_FAKE_NVML_NO_V2
int nvmlDeviceGetMemoryInfo_v2(Handle handle, MemoryV2* memory) {
  if (init_count.load() == 0) return kUninitialized;
  Script script = LoadScript();
  FakeDevice* device = DeviceOf(script, handle);
  if (device == nullptr || memory == nullptr) return kInvalidArgument;
  if (memory->version != kMemoryV2Version) return kArgumentVersionMismatch;
  if (script.v2_error != kSuccess) return script.v2_error;
  if (device->read_error != kSuccess) return device->read_error;
  memory->total = device->total;
  memory->reserved = device->reserved;
  memory->free = device->free;
  memory->used = device->total - device->free - device->reserved;
  return kSuccess;
}
#endif

}  // extern "C"
