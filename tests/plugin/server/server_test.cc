#include "plugin/server/server.h"

#include <chrono>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "gmock/gmock.h"
#include "grpcpp/grpcpp.h"
#include "gtest/gtest.h"
#include "kvgate/v1/admission.grpc.pb.h"
#include "plugin/memory/memory_source.h"
#include "plugin/server/config.h"
#include "plugin/server/model_pools.h"

namespace kvgate {
namespace {

using ::testing::HasSubstr;

// The embedded default (llama-3-8b on a simulated H100) on a free TCP port.
Server::Options DefaultOptions() {
  absl::StatusOr<ServerSettings> settings = ResolveServerConfig({});
  EXPECT_TRUE(settings.ok()) << settings.status();
  Server::Options options;
  options.settings = *std::move(settings);
  options.settings.grpc_address = "127.0.0.1:0";
  return options;
}

kvgate::v1::Budget GetBudget(int port, grpc::Status* status) {
  std::unique_ptr<kvgate::v1::Admission::Stub> stub =
      kvgate::v1::Admission::NewStub(
          grpc::CreateChannel(absl::StrCat("127.0.0.1:", port),
                              grpc::InsecureChannelCredentials()));
  grpc::ClientContext context;
  context.set_deadline(std::chrono::system_clock::now() +
                       std::chrono::seconds(10));
  kvgate::v1::GetBudgetRequest request;
  request.set_model(kDefaultPreset);
  kvgate::v1::Budget budget;
  *status = stub->GetBudget(&context, request, &budget);
  return budget;
}

TEST(ServerTest, ServesOnTheBoundPortUntilDrained) {
  absl::StatusOr<std::unique_ptr<Server>> server =
      Server::Start(DefaultOptions());
  ASSERT_TRUE(server.ok()) << server.status();
  ASSERT_GT((*server)->port(), 0);
  EXPECT_EQ((*server)->metrics_address(), "");
  ASSERT_EQ((*server)->registry().pools().size(), 1u);

  grpc::Status status;
  const kvgate::v1::Budget budget = GetBudget((*server)->port(), &status);
  ASSERT_TRUE(status.ok()) << status.error_message();
  EXPECT_EQ(budget.capacity_bytes(),
            (*server)->registry().pools()[0]->capacity_bytes());
  EXPECT_GT(budget.device_free_bytes(), 0u);  // the ticker's first poll

  (*server)->Drain();
  (*server)->Drain();  // a second call is harmless
  (*server)->Wait();
  GetBudget((*server)->port(), &status);
  EXPECT_FALSE(status.ok());
}

TEST(ServerTest, DestroyingAServingServerDrainsIt) {
  absl::StatusOr<std::unique_ptr<Server>> server =
      Server::Start(DefaultOptions());
  ASSERT_TRUE(server.ok()) << server.status();
  server->reset();
}

TEST(ServerTest, StartupErrorsNameTheirStage) {
  Server::Options bad_metrics = DefaultOptions();
  bad_metrics.settings.metrics_address = "127.0.0.1:99999";
  absl::StatusOr<std::unique_ptr<Server>> server =
      Server::Start(std::move(bad_metrics));
  ASSERT_FALSE(server.ok());
  EXPECT_EQ(StartupStage(server.status()), "metrics endpoint failed");

  absl::StatusOr<std::unique_ptr<Server>> first =
      Server::Start(DefaultOptions());
  ASSERT_TRUE(first.ok()) << first.status();
  Server::Options same_port = DefaultOptions();
  same_port.settings.grpc_address =
      absl::StrCat("127.0.0.1:", (*first)->port());
  server = Server::Start(std::move(same_port));
  ASSERT_FALSE(server.ok());
  EXPECT_EQ(StartupStage(server.status()), "cannot listen");
  EXPECT_THAT(server.status().message(), HasSubstr("could not bind"));

  EXPECT_EQ(StartupStage(absl::InternalError("x")), "start-up failed");
}

TEST(ServerTest, ValidateChecksAStaticConfigWithoutServing) {
  absl::StatusOr<Server::Validation> valid = Server::Validate(DefaultOptions());
  ASSERT_TRUE(valid.ok()) << valid.status();
  EXPECT_THAT(valid->models, ::testing::ElementsAre(kDefaultPreset));
  EXPECT_EQ(valid->memory_source, "static");

  Server::Options nvml = DefaultOptions();
  nvml.settings.memory_source.kind = MemorySourceSettings::Kind::kNvml;
  nvml.settings.memory_source.nvml_library = "/nonexistent/libnvidia-ml.so";
  valid = Server::Validate(std::move(nvml));
  ASSERT_TRUE(valid.ok()) << valid.status();
  EXPECT_THAT(valid->memory_source, HasSubstr("not opened"));

  Server::Options tiny = DefaultOptions();
  tiny.settings.memory_source.static_device_bytes = 1 << 20;
  valid = Server::Validate(std::move(tiny));
  ASSERT_FALSE(valid.ok());
  EXPECT_EQ(StartupStage(valid.status()), "invalid configuration");
}

TEST(BuildModelRegistryTest, NvmlPoolWhoseGpusNameNoDeviceFails) {
  Server::Options options = DefaultOptions();
  MemorySourceSettings source;
  source.kind = MemorySourceSettings::Kind::kNvml;
  DeviceMemory device;
  device.uuid = "GPU-aaaa";
  device.index = 0;
  device.total_bytes = device.free_bytes = 80ull << 30;
  const std::vector<DeviceMemory> devices = {device};
  KvgateMetrics metrics(KvgateMetrics::Options{});
  PoolBuildOptions pools;
  pools.source = &source;
  pools.devices = &devices;
  pools.controller = options.settings.controller;
  pools.metrics = &metrics;

  std::vector<ModelPoolSettings> models = options.settings.models;
  models[0].gpus = {"GPU-aaaa"};
  absl::StatusOr<ModelRegistry> registry = BuildModelRegistry(models, pools);
  ASSERT_TRUE(registry.ok()) << registry.status();
  EXPECT_EQ(registry->pools().size(), 1u);

  models[0].gpus = {"0", "3"};
  registry = BuildModelRegistry(models, pools);
  ASSERT_FALSE(registry.ok());
  EXPECT_EQ(registry.status().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_THAT(
      registry.status().message(),
      HasSubstr(absl::StrCat("model ", kDefaultPreset, ": gpus \"3\"")));
}

}  // namespace
}  // namespace kvgate
