"""Checks that an exported SavedModel runs on a stock model server."""

import tensorflow as tf
from tensorflow.core.protobuf import saved_model_pb2


def op_types(saved_model_dir):
  proto = saved_model_pb2.SavedModel()
  with open(f"{saved_model_dir}/saved_model.pb", "rb") as f:
    proto.ParseFromString(f.read())
  ops = set()
  for meta_graph in proto.meta_graphs:
    ops.update(node.op for node in meta_graph.graph_def.node)
    for function in meta_graph.graph_def.library.function:
      ops.update(node.op for node in function.node_def)
  return ops


def functions_of_signature(saved_model_dir, signature):
  """Names of the library functions a signature's outputs can run."""
  proto = saved_model_pb2.SavedModel()
  with open(f"{saved_model_dir}/saved_model.pb", "rb") as f:
    proto.ParseFromString(f.read())
  graph = proto.meta_graphs[0].graph_def
  library = {function.signature.name: function
             for function in graph.library.function}
  nodes = {node.name: node for node in graph.node}

  def called(attrs):
    for value in attrs.values():
      if value.func.name:
        yield value.func.name
      yield from (func.name for func in value.list.func)

  pending = [tensor.name.split(":")[0].lstrip("^") for tensor in
             proto.meta_graphs[0].signature_def[signature].outputs.values()]
  seen_nodes, functions = set(), set()
  while pending:
    name = pending.pop()
    if name in seen_nodes:
      continue
    seen_nodes.add(name)
    node = nodes[name]
    pending.extend(i.split(":")[0].lstrip("^") for i in node.input)
    functions.update(called(node.attr))
  todo = list(functions)
  while todo:
    for node in library[todo.pop()].node_def:
      for name in called(node.attr):
        if name not in functions:
          functions.add(name)
          todo.append(name)
  return {name: library[name] for name in functions}


def assert_servable(saved_model_dir, signatures=("serving_default",)):
  """Every op is a core TF op, none XLA-only or Python; the signatures run
  no function that must be XLA-compiled."""
  ops = op_types(saved_model_dir)
  not_core = sorted(op for op in ops if not hasattr(tf.raw_ops, op))
  assert not not_core, f"ops outside core TensorFlow: {not_core}"
  forbidden = sorted(op for op in ops if op.startswith("Xla") or
                     op in ("PyFunc", "PyFuncStateless", "EagerPyFunc"))
  assert not forbidden, f"ops a stock model server cannot run: {forbidden}"
  for signature in signatures:
    functions = functions_of_signature(saved_model_dir, signature)
    assert functions, f"{signature} runs no function"
    xla = sorted(name for name, function in functions.items()
                 if function.attr["_XlaMustCompile"].b)
    assert not xla, f"{signature} runs XLA-compiled functions: {xla}"
  return ops
