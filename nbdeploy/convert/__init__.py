"""scikit-learn -> ONNX: conversion, custom converters, graph edits, precision, boosters, and the fidelity check."""
