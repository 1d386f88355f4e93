#include "plugin/memory/memory_guard.h"

#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "gtest/gtest.h"
#include "plugin/memory/memory_source.h"
#include "plugin/memory/nvml_memory_source.h"
#include "plugin/memory/static_memory_source.h"
#include "tests/plugin/memory/fake_nvml_script.h"

namespace kvgate {
namespace {

constexpr uint64_t kMiB = 1ull << 20;
constexpr uint64_t kGiB = 1ull << 30;

// A live source whose next answer the test sets.
class ScriptedSource : public MemorySource {
 public:
  absl::string_view Name() const override { return "scripted"; }
  bool IsLive() const override { return true; }
  absl::StatusOr<std::vector<DeviceMemory>> Read() override { return next_; }

  void SetFree(std::vector<uint64_t> free_bytes) {
    std::vector<DeviceMemory> devices;
    for (size_t i = 0; i < free_bytes.size(); ++i) {
      DeviceMemory device;
      device.uuid = "GPU-" + std::to_string(i);
      device.index = static_cast<uint32_t>(i);
      device.total_bytes = 80 * kGiB;
      device.free_bytes = free_bytes[i];
      device.used_bytes = 80 * kGiB - free_bytes[i];
      devices.push_back(device);
    }
    next_ = std::move(devices);
  }
  void SetError(absl::Status error) { next_ = std::move(error); }

 private:
  absl::StatusOr<std::vector<DeviceMemory>> next_;
};

MemoryGuard::Options Margin(uint64_t bytes, bool fail_open = false) {
  MemoryGuard::Options options;
  options.free_margin_bytes = bytes;
  options.fail_open = fail_open;
  return options;
}

TEST(MemoryGuardTest, DefaultsAre512MiBMarginFailClosed) {
  MemoryGuard::Options options;
  EXPECT_EQ(options.free_margin_bytes, 512 * kMiB);
  EXPECT_FALSE(options.fail_open);
}

TEST(MemoryGuardTest, NoPressureWhileEveryGpuKeepsTheMargin) {
  ScriptedSource source;
  source.SetFree({10 * kGiB, 8 * kGiB});
  MemoryGuard guard(&source, Margin(512 * kMiB));
  MemoryGuard::Reading reading = guard.Poll();
  EXPECT_TRUE(reading.ok);
  EXPECT_FALSE(reading.pressure);
  EXPECT_EQ(reading.min_free_bytes, 8 * kGiB);
  EXPECT_EQ(reading.devices.size(), 2u);
  EXPECT_TRUE(reading.error.ok());
}

TEST(MemoryGuardTest, PressureWhenTheTightestGpuFallsUnderTheMargin) {
  ScriptedSource source;
  source.SetFree({10 * kGiB, 100 * kMiB, 9 * kGiB});
  MemoryGuard guard(&source, Margin(512 * kMiB));
  MemoryGuard::Reading reading = guard.Poll();
  EXPECT_TRUE(reading.ok);
  EXPECT_TRUE(reading.pressure);
  EXPECT_EQ(reading.min_free_bytes, 100 * kMiB);
}

TEST(MemoryGuardTest, FreeExactlyAtTheMarginIsNotPressure) {
  ScriptedSource source;
  source.SetFree({512 * kMiB});
  MemoryGuard guard(&source, Margin(512 * kMiB));
  EXPECT_FALSE(guard.Poll().pressure);
  source.SetFree({512 * kMiB - 1});
  EXPECT_TRUE(guard.Poll().pressure);
}

TEST(MemoryGuardTest, PressureClearsWhenMemoryIsFreed) {
  ScriptedSource source;
  source.SetFree({100 * kMiB});
  MemoryGuard guard(&source, Margin(512 * kMiB));
  EXPECT_TRUE(guard.Poll().pressure);
  source.SetFree({4 * kGiB});
  EXPECT_FALSE(guard.Poll().pressure);
}

TEST(MemoryGuardTest, StaticSourceNeverReportsPressure) {
  std::unique_ptr<MemorySource> source = MakeStaticMemorySource(100 * kMiB);
  MemoryGuard guard(source.get(), Margin(512 * kMiB));
  MemoryGuard::Reading reading = guard.Poll();
  EXPECT_TRUE(reading.ok);
  EXPECT_FALSE(reading.pressure);
  EXPECT_EQ(reading.min_free_bytes, 100 * kMiB);
}

TEST(MemoryGuardTest, ReadErrorFailsClosedByDefault) {
  ScriptedSource source;
  source.SetError(absl::UnavailableError("GPU is lost"));
  MemoryGuard guard(&source, MemoryGuard::Options());
  MemoryGuard::Reading reading = guard.Poll();
  EXPECT_FALSE(reading.ok);
  EXPECT_TRUE(reading.pressure);
  EXPECT_EQ(reading.error, absl::UnavailableError("GPU is lost"));
  EXPECT_TRUE(reading.devices.empty());
  EXPECT_EQ(reading.min_free_bytes, 0u);
}

TEST(MemoryGuardTest, ReadErrorFailsOpenWhenConfigured) {
  ScriptedSource source;
  source.SetError(absl::UnavailableError("GPU is lost"));
  MemoryGuard guard(&source, Margin(512 * kMiB, /*fail_open=*/true));
  MemoryGuard::Reading reading = guard.Poll();
  EXPECT_FALSE(reading.ok);
  EXPECT_FALSE(reading.pressure);
  EXPECT_EQ(reading.error.code(), absl::StatusCode::kUnavailable);
}

TEST(MemoryGuardTest, SourceWithNoDevicesIsAReadError) {
  ScriptedSource source;
  source.SetFree({});
  MemoryGuard guard(&source, MemoryGuard::Options());
  MemoryGuard::Reading reading = guard.Poll();
  EXPECT_FALSE(reading.ok);
  EXPECT_TRUE(reading.pressure);
  EXPECT_EQ(reading.error.code(), absl::StatusCode::kFailedPrecondition);
}

// End to end over the fake driver: a GPU that fills up, is lost, recovers.
TEST(MemoryGuardTest, FollowsTheDriverThroughPressureAndLoss) {
  FakeNvmlScript script;
  script.Write(
      "device GPU-aaaa 85520809984 85017493504 503316480\n"
      "device GPU-bbbb 85520809984 85017493504 503316480\n");
  NvmlOptions options;
  options.library_path = KVGATE_FAKE_NVML_PATH;
  options.devices = {"0", "1"};
  absl::StatusOr<std::unique_ptr<MemorySource>> source =
      MakeNvmlMemorySource(options);
  ASSERT_TRUE(source.ok()) << source.status();
  MemoryGuard guard(source->get(), MemoryGuard::Options());
  EXPECT_FALSE(guard.Poll().pressure);

  // GPU-bbbb down to 256 MiB free.
  script.Write(
      "device GPU-aaaa 85520809984 85017493504 503316480\n"
      "device GPU-bbbb 85520809984 268435456 503316480\n");
  MemoryGuard::Reading reading = guard.Poll();
  EXPECT_TRUE(reading.pressure);
  EXPECT_EQ(reading.min_free_bytes, 268'435'456u);

  script.Write(
      "device GPU-aaaa 85520809984 85017493504 503316480\n"
      "device GPU-bbbb 85520809984 85017493504 503316480\n"
      "read_error GPU-bbbb 15\n");
  reading = guard.Poll();
  EXPECT_FALSE(reading.ok);
  EXPECT_TRUE(reading.pressure);
  EXPECT_NE(reading.error.message().find("GPU-bbbb"), std::string::npos);
}

}  // namespace
}  // namespace kvgate
