#!/usr/bin/env python3
"""Tests of check_layering.py: the real tree keeps the layer rule, and a
planted upward include, forbidden link or link cycle is caught.

Usage: layering_test.py --root SRC --cmake CMAKE
"""

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import check_layering  # noqa: E402

ROOT = None
CMAKE = None
SOURCE_DIRS = ["estimator", "plugin", "metrics", "tools"]


class IncludeRuleTest(unittest.TestCase):
    def setUp(self):
        self.tmp = tempfile.mkdtemp(prefix="kvgate-layering-")
        for d in SOURCE_DIRS:
            shutil.copytree(os.path.join(ROOT, d), os.path.join(self.tmp, d))

    def tearDown(self):
        shutil.rmtree(self.tmp)

    def plant(self, path, include):
        full = os.path.join(self.tmp, path)
        with open(full, encoding="utf-8") as f:
            text = f.read()
        with open(full, "w", encoding="utf-8") as f:
            f.write(f'#include "{include}"\n' + text)

    def test_real_tree_keeps_the_rule(self):
        self.assertEqual(check_layering.check_includes(ROOT), [])

    def test_copy_keeps_the_rule(self):
        self.assertEqual(check_layering.check_includes(self.tmp), [])

    def test_upward_include_from_admission_to_server_fails(self):
        self.plant("plugin/admission/controller.h", "plugin/server/config.h")
        errors = check_layering.check_includes(self.tmp)
        self.assertEqual(len(errors), 1, errors)
        self.assertIn("plugin/admission/controller.h:1", errors[0])
        self.assertIn("layer 'admission'", errors[0])
        self.assertIn("of layer 'server'", errors[0])

    def test_metrics_including_the_service_fails(self):
        self.plant("metrics/metrics.h", "plugin/server/kvgate_service.h")
        errors = check_layering.check_includes(self.tmp)
        self.assertEqual(len(errors), 1, errors)
        self.assertIn("metrics/metrics.h:1", errors[0])

    def test_estimator_including_planning_fails(self):
        self.plant("estimator/serving.h", "estimator/planning/training.h")
        errors = check_layering.check_includes(self.tmp)
        self.assertEqual(len(errors), 1, errors)
        self.assertIn("layer 'estimator'", errors[0])

    def test_grpc_in_the_admission_core_fails(self):
        self.plant("plugin/admission/model_pool.h", "grpcpp/grpcpp.h")
        self.plant("plugin/memory/memory_source.h", "kvgate/v1/config.pb.h")
        errors = check_layering.check_includes(self.tmp)
        self.assertEqual(len(errors), 2, errors)

    def test_wrong_root_is_an_error(self):
        self.assertTrue(check_layering.check_includes(
            os.path.join(self.tmp, "nowhere")))


DOT = """digraph "kvgate" {{
"node0" [ label = "kvgate_estimator", shape = octagon ];
"node1" [ label = "kvgate_admission", shape = octagon ];
"node2" [ label = "kvgate_server", shape = octagon ];
"node3" [ label = "kvgated", shape = egg ];
"node4" [ label = "kvgate_planning", shape = octagon ];
"node1" -> "node0" [ style = dotted ];
"node2" -> "node1" [ style = dotted ];
"node3" -> "node2" [ style = dotted ];
{extra}
}}
"""


class LinkRuleTest(unittest.TestCase):
    def check(self, extra):
        with tempfile.NamedTemporaryFile("w", suffix=".dot",
                                         delete=False) as f:
            f.write(DOT.format(extra=extra))
        try:
            return check_layering.check_links(f.name)
        finally:
            os.unlink(f.name)

    def test_downward_links_pass(self):
        self.assertEqual(self.check(""), [])

    def test_upward_link_fails(self):
        errors = self.check('"node1" -> "node2" [ style = dotted ];')
        self.assertTrue(any("kvgate_admission (layer 'admission') links "
                            "kvgate_server" in e for e in errors), errors)
        self.assertTrue(any(e.startswith("link cycle:") for e in errors),
                        errors)

    def test_sidecar_linking_planning_fails(self):
        errors = self.check('"node2" -> "node4" [ style = dotted ];')
        self.assertTrue(any("kvgated links kvgate_planning" in e
                            for e in errors), errors)

    def test_real_cmake_graph_keeps_the_rule(self):
        with tempfile.TemporaryDirectory(prefix="kvgate-graphviz-") as build:
            dot = os.path.join(build, "targets.dot")
            run = subprocess.run(
                [CMAKE, "-S", ROOT, "-B", build, "-DKVGATE_BUILD_TESTS=OFF",
                 "-DKVGATE_BUILD_BENCH=OFF", f"--graphviz={dot}"],
                capture_output=True, text=True, timeout=240)
            self.assertEqual(run.returncode, 0, run.stderr[-2000:])
            graph = check_layering.parse_graphviz(dot)
            self.assertIn("kvgate_server", graph)
            self.assertIn("kvgate_admission", graph["kvgate_server"])
            self.assertEqual(check_layering.check_links(dot), [])


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--root", required=True)
    parser.add_argument("--cmake", default="cmake")
    args, rest = parser.parse_known_args()
    ROOT = os.path.abspath(args.root)
    CMAKE = args.cmake
    unittest.main(argv=[sys.argv[0]] + rest, verbosity=2)
