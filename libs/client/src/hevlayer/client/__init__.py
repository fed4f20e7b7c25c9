"""Typed client of the hevlayer v1 API."""
