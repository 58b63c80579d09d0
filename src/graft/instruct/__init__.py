"""Instruction data: adaptation, mixing and generation.

Ways of building visual instruction records in LLaVA's format: ``adapt`` turns benchmark-style
data (VQA question/answer lines, COCO captions, multiple choice) into records with LLaVA-1.5's
response-format prompts; the other modules of this package mix and generate such data.
"""
