"""Deployment: the CloudFormation template, the stack script and the operator tools."""
