#include "plugin/memory/memory_source.h"

#include <dlfcn.h>

#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "absl/status/status.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "plugin/memory/nvml_memory_source.h"
#include "plugin/memory/static_memory_source.h"
#include "tests/plugin/memory/fake_nvml_script.h"

namespace kvgate {
namespace {

using ::testing::AllOf;
using ::testing::HasSubstr;

constexpr uint64_t kGiB = 1ull << 30;

// H100 80GB HBM3, driver 580, as measured (docs/design.md, "Memory model": "GPU
// memory as the driver reports it").
constexpr uint64_t kH100Total = 85'520'809'984;
constexpr uint64_t kH100Reserved = 503'316'480;
constexpr uint64_t kH100CudaTotal = 85'017'493'504;

// ---------------------------------------------------------------- static

TEST(StaticMemorySourceTest, ReportsIdenticalSimulatedDevices) {
  std::unique_ptr<MemorySource> source = MakeStaticMemorySource(80 * kGiB, 2);
  EXPECT_EQ(source->Name(), "static");
  EXPECT_FALSE(source->IsLive());
  absl::StatusOr<std::vector<DeviceMemory>> devices = source->Read();
  ASSERT_TRUE(devices.ok()) << devices.status();
  ASSERT_EQ(devices->size(), 2u);
  for (uint32_t i = 0; i < 2; ++i) {
    const DeviceMemory& device = (*devices)[i];
    EXPECT_EQ(device.uuid, "sim-" + std::to_string(i));
    EXPECT_EQ(device.index, i);
    EXPECT_EQ(device.total_bytes, 80 * kGiB);
    EXPECT_EQ(device.free_bytes, 80 * kGiB);
    EXPECT_EQ(device.used_bytes, 0u);
    EXPECT_EQ(device.reserved_bytes, 0u);
  }
}

TEST(StaticMemorySourceTest, DefaultsToOneDevice) {
  absl::StatusOr<std::vector<DeviceMemory>> devices =
      MakeStaticMemorySource(24 * kGiB)->Read();
  ASSERT_TRUE(devices.ok()) << devices.status();
  ASSERT_EQ(devices->size(), 1u);
  EXPECT_EQ((*devices)[0].uuid, "sim-0");
  EXPECT_EQ((*devices)[0].total_bytes, 24 * kGiB);
}

TEST(StaticMemorySourceTest, NoDevicesFailsEveryRead) {
  absl::StatusOr<std::vector<DeviceMemory>> devices =
      MakeStaticMemorySource(24 * kGiB, 0)->Read();
  EXPECT_EQ(devices.status().code(), absl::StatusCode::kFailedPrecondition);
}

// ------------------------------------------------------------------ nvml

// Two GPUs; GPU-bbbb has 10 GiB in use.
constexpr char kTwoGpus[] =
    "device GPU-aaaa 85520809984 85017493504 503316480\n"
    "device GPU-bbbb 85520809984 74280095744 503316480\n";

NvmlOptions FakeOptions(std::vector<std::string> devices = {}) {
  NvmlOptions options;
  options.library_path = KVGATE_FAKE_NVML_PATH;
  options.devices = std::move(devices);
  return options;
}

// Outstanding nvmlInit_v2 calls in the fake, seen through a handle of our own.
class NvmlInitCount {
 public:
  NvmlInitCount() : handle_(dlopen(KVGATE_FAKE_NVML_PATH, RTLD_NOW)) {
    if (handle_ != nullptr) {
      count_ = reinterpret_cast<int (*)()>(
          dlsym(handle_, "kvgate_fake_nvml_init_count"));
    }
  }
  ~NvmlInitCount() {
    if (handle_ != nullptr) dlclose(handle_);
  }
  int Get() const { return count_ != nullptr ? count_() : -1; }

 private:
  void* handle_;
  int (*count_)() = nullptr;
};

TEST(NvmlMemorySourceTest, MissingLibraryIsOneClearError) {
  NvmlOptions options;
  options.library_path = "/nonexistent/libnvidia-ml.so.1";
  absl::StatusOr<std::unique_ptr<MemorySource>> source =
      MakeNvmlMemorySource(options);
  EXPECT_EQ(source.status().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_THAT(source.status().message(),
              AllOf(HasSubstr("nvml: cannot load /nonexistent/libnvidia-ml"),
                    HasSubstr("No such file"),
                    HasSubstr("NVIDIA_DRIVER_CAPABILITIES=utility")));
}

TEST(NvmlMemorySourceTest, LibraryThatIsNotNvmlIsRejected) {
  NvmlOptions options;
  options.library_path = "libm.so.6";
  absl::StatusOr<std::unique_ptr<MemorySource>> source =
      MakeNvmlMemorySource(options);
  EXPECT_EQ(source.status().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_THAT(source.status().message(),
              AllOf(HasSubstr("libm.so.6 lacks nvmlInit_v2"),
                    HasSubstr("nvmlDeviceGetMemoryInfo")));
}

TEST(NvmlMemorySourceTest, InitFailureIsOneClearError) {
  FakeNvmlScript script;
  script.Write(std::string("init_error 9\n") + kTwoGpus);
  NvmlInitCount inits;
  absl::StatusOr<std::unique_ptr<MemorySource>> source =
      MakeNvmlMemorySource(FakeOptions());
  EXPECT_EQ(source.status().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_THAT(source.status().message(),
              HasSubstr("nvml: nvmlInit_v2 failed: Driver Not Loaded "
                        "(NVML error 9)"));
  EXPECT_EQ(inits.Get(), 0);
}

TEST(NvmlMemorySourceTest, WatchesDeviceZeroByDefault) {
  FakeNvmlScript script;
  script.Write(kTwoGpus);
  absl::StatusOr<std::unique_ptr<MemorySource>> source =
      MakeNvmlMemorySource(FakeOptions());
  ASSERT_TRUE(source.ok()) << source.status();
  EXPECT_EQ((*source)->Name(), "nvml");
  EXPECT_TRUE((*source)->IsLive());
  absl::StatusOr<std::vector<DeviceMemory>> devices = (*source)->Read();
  ASSERT_TRUE(devices.ok()) << devices.status();
  ASSERT_EQ(devices->size(), 1u);
  EXPECT_EQ((*devices)[0].uuid, "GPU-aaaa");
  EXPECT_EQ((*devices)[0].index, 0u);
}

TEST(NvmlMemorySourceTest, SelectsByIndex) {
  FakeNvmlScript script;
  script.Write(kTwoGpus);
  absl::StatusOr<std::unique_ptr<MemorySource>> source =
      MakeNvmlMemorySource(FakeOptions({"1"}));
  ASSERT_TRUE(source.ok()) << source.status();
  absl::StatusOr<std::vector<DeviceMemory>> devices = (*source)->Read();
  ASSERT_TRUE(devices.ok()) << devices.status();
  ASSERT_EQ(devices->size(), 1u);
  EXPECT_EQ((*devices)[0].uuid, "GPU-bbbb");
  EXPECT_EQ((*devices)[0].index, 1u);
  EXPECT_EQ((*devices)[0].free_bytes, 74'280'095'744u);
}

TEST(NvmlMemorySourceTest, SelectsByUuidInConfiguredOrder) {
  FakeNvmlScript script;
  script.Write(kTwoGpus);
  absl::StatusOr<std::unique_ptr<MemorySource>> source =
      MakeNvmlMemorySource(FakeOptions({"GPU-bbbb", "GPU-aaaa"}));
  ASSERT_TRUE(source.ok()) << source.status();
  absl::StatusOr<std::vector<DeviceMemory>> devices = (*source)->Read();
  ASSERT_TRUE(devices.ok()) << devices.status();
  ASSERT_EQ(devices->size(), 2u);
  EXPECT_EQ((*devices)[0].uuid, "GPU-bbbb");
  EXPECT_EQ((*devices)[0].index, 1u);
  EXPECT_EQ((*devices)[1].uuid, "GPU-aaaa");
  EXPECT_EQ((*devices)[1].index, 0u);
}

TEST(NvmlMemorySourceTest, UnknownIndexNamesItAndTheVisibleGpus) {
  FakeNvmlScript script;
  script.Write(kTwoGpus);
  NvmlInitCount inits;
  absl::StatusOr<std::unique_ptr<MemorySource>> source =
      MakeNvmlMemorySource(FakeOptions({"0", "2"}));
  EXPECT_EQ(source.status().code(), absl::StatusCode::kNotFound);
  EXPECT_THAT(source.status().message(),
              AllOf(HasSubstr("no GPU with index 2"),
                    HasSubstr("2 GPUs: 0=GPU-aaaa, 1=GPU-bbbb")));
  EXPECT_EQ(inits.Get(), 0) << "a failed creation must shut NVML down";
}

TEST(NvmlMemorySourceTest, UnknownUuidNamesIt) {
  FakeNvmlScript script;
  script.Write(kTwoGpus);
  absl::StatusOr<std::unique_ptr<MemorySource>> source =
      MakeNvmlMemorySource(FakeOptions({"GPU-zzzz"}));
  EXPECT_EQ(source.status().code(), absl::StatusCode::kNotFound);
  EXPECT_THAT(source.status().message(),
              AllOf(HasSubstr("no GPU with UUID \"GPU-zzzz\""),
                    HasSubstr("0=GPU-aaaa")));
}

TEST(NvmlMemorySourceTest, EmptyDeviceNameIsInvalid) {
  FakeNvmlScript script;
  script.Write(kTwoGpus);
  absl::StatusOr<std::unique_ptr<MemorySource>> source =
      MakeNvmlMemorySource(FakeOptions({""}));
  EXPECT_EQ(source.status().code(), absl::StatusCode::kInvalidArgument);
}

TEST(NvmlMemorySourceTest, SameGpuNamedTwiceIsInvalid) {
  FakeNvmlScript script;
  script.Write(kTwoGpus);
  absl::StatusOr<std::unique_ptr<MemorySource>> source =
      MakeNvmlMemorySource(FakeOptions({"1", "GPU-bbbb"}));
  EXPECT_EQ(source.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(source.status().message(),
              HasSubstr("\"1\" and \"GPU-bbbb\" are the same GPU"));
}

TEST(NvmlMemorySourceTest, ReportsDriverReservedMemoryFromV2) {
  FakeNvmlScript script;
  script.Write("device GPU-h100 85520809984 85017493504 503316480\n");
  absl::StatusOr<std::unique_ptr<MemorySource>> source =
      MakeNvmlMemorySource(FakeOptions());
  ASSERT_TRUE(source.ok()) << source.status();
  absl::StatusOr<std::vector<DeviceMemory>> devices = (*source)->Read();
  ASSERT_TRUE(devices.ok()) << devices.status();
  const DeviceMemory& h100 = (*devices)[0];
  EXPECT_EQ(h100.total_bytes, kH100Total);
  EXPECT_EQ(h100.reserved_bytes, kH100Reserved);
  EXPECT_EQ(h100.free_bytes, kH100CudaTotal);
  EXPECT_EQ(h100.used_bytes, 0u);
}

TEST(NvmlMemorySourceTest, WithoutV2TheReservationCountsAsUsed) {
  FakeNvmlScript script;
  script.Write("device GPU-h100 85520809984 85017493504 503316480\n");
  NvmlOptions options = FakeOptions();
  options.library_path = KVGATE_FAKE_NVML_V1_PATH;
  absl::StatusOr<std::unique_ptr<MemorySource>> source =
      MakeNvmlMemorySource(options);
  ASSERT_TRUE(source.ok()) << source.status();
  absl::StatusOr<std::vector<DeviceMemory>> devices = (*source)->Read();
  ASSERT_TRUE(devices.ok()) << devices.status();
  EXPECT_EQ((*devices)[0].total_bytes, kH100Total);
  EXPECT_EQ((*devices)[0].reserved_bytes, 0u);
  EXPECT_EQ((*devices)[0].used_bytes, kH100Reserved);
  EXPECT_EQ((*devices)[0].free_bytes, kH100CudaTotal);
}

TEST(NvmlMemorySourceTest, FallsBackToV1WhenV2IsNotSupported) {
  FakeNvmlScript script;
  script.Write(
      "v2_error 3\n"
      "device GPU-h100 85520809984 85017493504 503316480\n");
  absl::StatusOr<std::unique_ptr<MemorySource>> source =
      MakeNvmlMemorySource(FakeOptions());
  ASSERT_TRUE(source.ok()) << source.status();
  absl::StatusOr<std::vector<DeviceMemory>> devices = (*source)->Read();
  ASSERT_TRUE(devices.ok()) << devices.status();
  EXPECT_EQ((*devices)[0].reserved_bytes, 0u);
  EXPECT_EQ((*devices)[0].used_bytes, kH100Reserved);
}

TEST(NvmlMemorySourceTest, ReportsValuesChangingBetweenReads) {
  FakeNvmlScript script;
  script.Write(kTwoGpus);
  absl::StatusOr<std::unique_ptr<MemorySource>> source =
      MakeNvmlMemorySource(FakeOptions({"0", "1"}));
  ASSERT_TRUE(source.ok()) << source.status();

  // The engine on GPU-aaaa allocates 60 GiB (64,424,509,440 bytes).
  script.Write(
      "device GPU-aaaa 85520809984 20592984064 503316480\n"
      "device GPU-bbbb 85520809984 74280095744 503316480\n");
  absl::StatusOr<std::vector<DeviceMemory>> devices = (*source)->Read();
  ASSERT_TRUE(devices.ok()) << devices.status();
  EXPECT_EQ((*devices)[0].free_bytes, 20'592'984'064u);
  EXPECT_EQ((*devices)[0].used_bytes, 64'424'509'440u);
  EXPECT_EQ((*devices)[1].free_bytes, 74'280'095'744u);
}

TEST(NvmlMemorySourceTest, DeviceFailingMidRunNamesDeviceAndError) {
  FakeNvmlScript script;
  script.Write(kTwoGpus);
  absl::StatusOr<std::unique_ptr<MemorySource>> source =
      MakeNvmlMemorySource(FakeOptions({"0", "1"}));
  ASSERT_TRUE(source.ok()) << source.status();

  script.Write(std::string(kTwoGpus) + "read_error GPU-bbbb 15\n");
  absl::StatusOr<std::vector<DeviceMemory>> devices = (*source)->Read();
  EXPECT_EQ(devices.status().code(), absl::StatusCode::kUnavailable);
  EXPECT_THAT(devices.status().message(),
              HasSubstr("nvml: cannot read memory of GPU 1 (GPU-bbbb): "
                        "GPU is lost (NVML error 15)"));

  script.Write(kTwoGpus);  // The driver recovers.
  devices = (*source)->Read();
  ASSERT_TRUE(devices.ok()) << devices.status();
  EXPECT_EQ(devices->size(), 2u);
}

TEST(NvmlMemorySourceTest, DeviceUnreadableAtCreationFailsCreation) {
  FakeNvmlScript script;
  script.Write(std::string(kTwoGpus) + "read_error GPU-aaaa 15\n");
  absl::StatusOr<std::unique_ptr<MemorySource>> source =
      MakeNvmlMemorySource(FakeOptions());
  EXPECT_EQ(source.status().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_THAT(source.status().message(), HasSubstr("GPU-aaaa"));
}

TEST(NvmlMemorySourceTest, DestructionShutsNvmlDown) {
  FakeNvmlScript script;
  script.Write(kTwoGpus);
  NvmlInitCount inits;
  absl::StatusOr<std::unique_ptr<MemorySource>> source =
      MakeNvmlMemorySource(FakeOptions());
  ASSERT_TRUE(source.ok()) << source.status();
  EXPECT_EQ(inits.Get(), 1);
  source->reset();
  EXPECT_EQ(inits.Get(), 0);
}

TEST(NvmlMemorySourceTest, ConcurrentReadsAllSucceed) {
  FakeNvmlScript script;
  script.Write(kTwoGpus);
  absl::StatusOr<std::unique_ptr<MemorySource>> source =
      MakeNvmlMemorySource(FakeOptions({"0", "1"}));
  ASSERT_TRUE(source.ok()) << source.status();
  std::vector<std::thread> pollers;
  std::vector<int> failures(4, 0);
  for (int t = 0; t < 4; ++t) {
    pollers.emplace_back([&, t] {
      for (int i = 0; i < 50; ++i) {
        absl::StatusOr<std::vector<DeviceMemory>> devices = (*source)->Read();
        if (!devices.ok() || devices->size() != 2) ++failures[t];
      }
    });
  }
  for (std::thread& poller : pollers) poller.join();
  EXPECT_EQ(failures, std::vector<int>(4, 0));
}

}  // namespace
}  // namespace kvgate
