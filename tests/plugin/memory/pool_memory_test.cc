#include "plugin/memory/pool_memory.h"

#include <algorithm>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "plugin/memory/memory_guard.h"
#include "plugin/memory/memory_source.h"

namespace kvgate {
namespace {

using ::testing::ElementsAre;
using ::testing::HasSubstr;
using ::testing::IsEmpty;
using ::testing::Not;
using ::testing::Optional;

constexpr uint64_t kGiB = 1ull << 30;

DeviceMemory Device(uint32_t index, std::string uuid, uint64_t total,
                    uint64_t free, uint64_t reserved = 0) {
  DeviceMemory d;
  d.uuid = std::move(uuid);
  d.index = index;
  d.total_bytes = total;
  d.free_bytes = free;
  d.reserved_bytes = reserved;
  d.used_bytes = total - free - reserved;
  return d;
}

// Two GPUs as NVML lists them; the second is smaller and has less free.
std::vector<DeviceMemory> TwoGpus() {
  return {Device(0, "GPU-aaaa", 80 * kGiB, 70 * kGiB, kGiB / 2),
          Device(1, "GPU-bbbb", 40 * kGiB, 30 * kGiB, kGiB / 4)};
}

// The value of `bytes`, failing the test when it is an error.
uint64_t ValueOf(const absl::StatusOr<uint64_t>& bytes) {
  EXPECT_TRUE(bytes.ok()) << bytes.status();
  return bytes.value_or(0);
}

std::vector<uint32_t> Indices(const std::vector<const DeviceMemory*>& ds) {
  std::vector<uint32_t> out;
  for (const DeviceMemory* d : ds) out.push_back(d->index);
  return out;
}

TEST(GpuNamesDeviceTest, IntegerIsAnIndexAnythingElseAUuid) {
  const DeviceMemory d = Device(3, "GPU-cccc", kGiB, kGiB);
  EXPECT_TRUE(GpuNamesDevice("3", d));
  EXPECT_FALSE(GpuNamesDevice("0", d));
  EXPECT_TRUE(GpuNamesDevice("GPU-cccc", d));
  EXPECT_FALSE(GpuNamesDevice("GPU-dddd", d));
  // A UUID is never read as an index, even one that starts with a digit.
  EXPECT_FALSE(GpuNamesDevice("3abc", d));
}

TEST(MatchDevicesTest, MatchesByIndexAndUuidInTheOrderOfGpus) {
  const std::vector<DeviceMemory> devices = TwoGpus();
  EXPECT_THAT(Indices(MatchDevices({"1", "GPU-aaaa"}, devices)),
              ElementsAre(1, 0));
  EXPECT_THAT(Indices(MatchDevices({"0"}, devices)), ElementsAre(0));
  EXPECT_THAT(MatchDevices({"7", "GPU-zzzz"}, devices), IsEmpty());
  EXPECT_THAT(MatchDevices({}, devices), IsEmpty());
}

TEST(MatchDevicesTest, PointsIntoTheDevicesGiven) {
  const std::vector<DeviceMemory> devices = TwoGpus();
  const std::vector<const DeviceMemory*> matched =
      MatchDevices({"GPU-bbbb"}, devices);
  ASSERT_EQ(matched.size(), 1u);
  EXPECT_EQ(matched[0], &devices[1]);
}

TEST(PoolDeviceBytesTest, TightestMatchedDeviceLessItsReservation) {
  const std::vector<DeviceMemory> devices = TwoGpus();
  EXPECT_EQ(ValueOf(PoolDeviceBytes({"0"}, devices)), 80 * kGiB - kGiB / 2);
  EXPECT_EQ(ValueOf(PoolDeviceBytes({"0", "GPU-bbbb"}, devices)),
            40 * kGiB - kGiB / 4);
}

TEST(PoolDeviceBytesTest, ReservationLargerThanTotalIsZeroNotAWrap) {
  const std::vector<DeviceMemory> devices = {Device(0, "GPU-x", kGiB, 0, 0)};
  std::vector<DeviceMemory> odd = devices;
  odd[0].reserved_bytes = 2 * kGiB;
  EXPECT_EQ(ValueOf(PoolDeviceBytes({"0"}, odd)), 0u);
}

TEST(PoolDeviceBytesTest, UnmatchedGpusAreAnErrorNamingThem) {
  const absl::StatusOr<uint64_t> bytes =
      PoolDeviceBytes({"0", "5", "GPU-zzzz"}, TwoGpus());
  ASSERT_FALSE(bytes.ok());
  EXPECT_EQ(bytes.status().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_THAT(bytes.status().message(), HasSubstr("\"5\", \"GPU-zzzz\""));
  EXPECT_THAT(bytes.status().message(), Not(HasSubstr("\"0\"")));
  // The devices that were read, so that the user can fix the names.
  EXPECT_THAT(bytes.status().message(), HasSubstr("0=GPU-aaaa, 1=GPU-bbbb"));
}

TEST(PoolDeviceBytesTest, NoGpusOrNoDevicesIsAnError) {
  EXPECT_EQ(PoolDeviceBytes({}, TwoGpus()).status().code(),
            absl::StatusCode::kFailedPrecondition);
  const absl::StatusOr<uint64_t> none = PoolDeviceBytes({"0"}, {});
  EXPECT_EQ(none.status().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_THAT(none.status().message(), HasSubstr("none"));
}

MemoryGuard::Reading OkReading(std::vector<DeviceMemory> devices) {
  MemoryGuard::Reading r;
  r.ok = true;
  r.min_free_bytes = UINT64_MAX;
  for (const DeviceMemory& d : devices) {
    r.min_free_bytes = std::min(r.min_free_bytes, d.free_bytes);
  }
  r.devices = std::move(devices);
  return r;
}

MemoryGuard::Reading FailedReading(bool pressure) {
  MemoryGuard::Reading r;
  r.ok = false;
  r.pressure = pressure;
  r.error = absl::UnavailableError("GPU is lost");
  return r;
}

PoolMemoryInput Live(const std::vector<std::string>& gpus, uint64_t margin) {
  PoolMemoryInput in;
  in.live = true;
  in.gpus = gpus;
  in.free_margin_bytes = margin;
  return in;
}

TEST(JudgePoolMemoryTest, LiveTakesTheTightestOfThePoolsOwnDevices) {
  const std::vector<std::string> gpus = {"0"};
  MemoryGuard::Reading r = OkReading(TwoGpus());
  // The guard judged the whole source (device 1 is tight); pool 0 is not.
  r.pressure = true;
  const PoolMemory m = JudgePoolMemory(r, Live(gpus, 40 * kGiB));
  EXPECT_FALSE(m.pressure);
  EXPECT_THAT(m.device_free_bytes, Optional(70 * kGiB));

  const std::vector<std::string> both = {"0", "1"};
  const PoolMemory tight = JudgePoolMemory(r, Live(both, 40 * kGiB));
  EXPECT_TRUE(tight.pressure);
  EXPECT_THAT(tight.device_free_bytes, Optional(30 * kGiB));
}

TEST(JudgePoolMemoryTest, LivePressureIsStrictlyUnderTheMargin) {
  const std::vector<std::string> gpus = {"GPU-bbbb"};
  const MemoryGuard::Reading r = OkReading(TwoGpus());
  EXPECT_FALSE(JudgePoolMemory(r, Live(gpus, 30 * kGiB)).pressure);
  EXPECT_TRUE(JudgePoolMemory(r, Live(gpus, 30 * kGiB + 1)).pressure);
}

TEST(JudgePoolMemoryTest, LiveWithNoMatchedDeviceFallsBackToTheReading) {
  const std::vector<std::string> gpus = {"GPU-gone"};
  const MemoryGuard::Reading r = OkReading(TwoGpus());
  const PoolMemory m = JudgePoolMemory(r, Live(gpus, 31 * kGiB));
  EXPECT_THAT(m.device_free_bytes, Optional(30 * kGiB));
  EXPECT_TRUE(m.pressure);
}

TEST(JudgePoolMemoryTest, StaticIsTheDeviceLessTheLedger) {
  const std::vector<std::string> gpus = {"0"};
  PoolMemoryInput in;
  in.live = false;
  in.gpus = gpus;
  in.free_margin_bytes = 512ull << 20;
  in.static_device_bytes = 80 * kGiB;
  in.ledger_used_bytes = 20 * kGiB;
  MemoryGuard::Reading r =
      OkReading({Device(0, "sim-0", 80 * kGiB, 80 * kGiB)});
  PoolMemory m = JudgePoolMemory(r, in);
  EXPECT_FALSE(m.pressure);
  EXPECT_THAT(m.device_free_bytes, Optional(60 * kGiB));

  // Saturates at 0; the reading's pressure is passed on as it is.
  in.ledger_used_bytes = 90 * kGiB;
  r.pressure = true;
  m = JudgePoolMemory(r, in);
  EXPECT_TRUE(m.pressure);
  EXPECT_THAT(m.device_free_bytes, Optional(0u));
}

TEST(JudgePoolMemoryTest, FailedReadKeepsTheGuardsAnswerAndTheLastFigure) {
  const std::vector<std::string> gpus = {"0"};
  for (bool live : {true, false}) {
    PoolMemoryInput in = Live(gpus, kGiB);
    in.live = live;
    in.static_device_bytes = 80 * kGiB;
    const PoolMemory closed = JudgePoolMemory(FailedReading(true), in);
    EXPECT_TRUE(closed.pressure);
    EXPECT_EQ(closed.device_free_bytes, std::nullopt);
    const PoolMemory open = JudgePoolMemory(FailedReading(false), in);
    EXPECT_FALSE(open.pressure);
    EXPECT_EQ(open.device_free_bytes, std::nullopt);
  }
}

// A simulated device holds what the ledgers of the pools on it hold, so the
// device series agree with the pools' device_free_bytes.
TEST(StaticDevicesAfterLedgersTest, DeviceFreeIsWhatTheLedgersLeave) {
  const std::vector<DeviceMemory> sims = {
      Device(0, "sim-0", 80 * kGiB, 80 * kGiB),
      Device(1, "sim-1", 80 * kGiB, 80 * kGiB)};
  const std::vector<std::string> first = {"sim-0"};
  const std::vector<std::string> both = {"0", "1"};
  const std::vector<PoolLedgerUse> pools = {{first, 20 * kGiB},
                                            {both, 10 * kGiB}};
  const std::vector<DeviceMemory> out = StaticDevicesAfterLedgers(sims, pools);
  ASSERT_EQ(out.size(), 2u);
  EXPECT_EQ(out[0].used_bytes, 30 * kGiB);
  EXPECT_EQ(out[0].free_bytes, 50 * kGiB);
  EXPECT_EQ(out[1].used_bytes, 10 * kGiB);
  EXPECT_EQ(out[1].free_bytes, 70 * kGiB);
  EXPECT_EQ(out[1].total_bytes, 80 * kGiB);

  // A ledger larger than the device leaves 0, never a wrap.
  const std::vector<PoolLedgerUse> over = {{first, 90 * kGiB}};
  EXPECT_EQ(StaticDevicesAfterLedgers(sims, over)[0].free_bytes, 0u);
}

}  // namespace
}  // namespace kvgate
